//! The content rules a record must keep to be stored — the same rules, with the same limits, as
//! the deployment's `convex/convex/validate.ts` — and the corrections that make a record built
//! from a bad source row keep them, so the daemon never queues a record the server must reject.
//!
//! The rules ([`check`], a mirror of `validateRecord`):
//! - every number is finite, `>= 0` and `<=` [`MAX_NUMBER`] (2^53 − 1); every `cost` is
//!   `<=` [`MAX_COST_USD`];
//! - the timestamps `createdAt`, `updatedAt`, `exportedAt`, `archivedAt`, `deletedAt`,
//!   `revision` and `messages[].createdAt` / `completedAt` lie in [[`MIN_TIMESTAMP_MS`]
//!   (2000-01-01), now + [`MAX_FUTURE_MS`] (1 day)];
//! - `updatedAt >= createdAt`;
//! - strings are at most [`MAX_STRING_CHARS`] UTF-16 code units (JavaScript's `length`), ids and
//!   names (the keys of [`ID_KEYS`]) at most [`MAX_ID_CHARS`], the title at most
//!   [`MAX_TITLE_CHARS`]; arrays at most [`MAX_ARRAY_ITEMS`] items.
//!
//! "Now" is the record's own `exportedAt` (the daemon's clock when it built the record; this
//! module reads no clock). The server compares with its clock, so a daemon clock more than a day
//! ahead of the deployment's still gets records rejected there — one by one, never blocking the
//! others.
//!
//! [`correct`] applies the rules to a freshly built record, field by field (the table):
//!
//! | value out of the rules | becomes |
//! |---|---|
//! | a count, token total, duration or id-like number over 2^53 − 1 | 2^53 − 1 (clamped) |
//! | a `cost` that is NaN, infinite or negative | 0 (dropped) |
//! | a `cost` over 10^9 USD | 10^9 (clamped) |
//! | `updatedAt` outside the range | `exportedAt` |
//! | `createdAt` outside the range, or after `updatedAt` | `updatedAt`; `durationMs` (measured from it) is dropped |
//! | `durationMs` negative | dropped |
//! | `archivedAt`, `messages[].completedAt` outside the range | dropped |
//! | `deletedAt` outside the range | `exportedAt` |
//! | `messages[].createdAt` outside the range | the record's `createdAt` |
//! | an id or name longer than 1024 UTF-16 units, another string longer than its limit | its first units (on a character boundary) |
//! | an array not capped by [`crate::export::fit()`] (`children[].models`) over 4096 items | its first 4096 |
//!
//! Each field corrected is named in [`SessionExport::corrected`] (its path without array indexes:
//! `"createdAt"`, `"models.cost"`, `"messages.completedAt"`; sorted, no duplicates). The daemon
//! logs one warning per record that needed a correction, naming the session and the fields,
//! never a value. `revision` is left alone: the tracker sets it after building, always in range.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::export::record::*;

/// 2000-01-01T00:00:00Z in epoch ms: the earliest timestamp accepted.
pub const MIN_TIMESTAMP_MS: i64 = 946_684_800_000;
/// How far past "now" a timestamp may be (clock skew), ms: one day.
pub const MAX_FUTURE_MS: i64 = 86_400_000;
/// The largest number accepted anywhere: 2^53 − 1 (JavaScript's `Number.MAX_SAFE_INTEGER`).
pub const MAX_NUMBER: u64 = (1 << 53) - 1;
/// The largest cost accepted, in USD (a session's, a model's, a child's, a rollup's).
pub const MAX_COST_USD: f64 = 1e9;
/// Longest string, in UTF-16 code units.
pub const MAX_STRING_CHARS: usize = 1 << 20;
/// Longest id or name (the keys of [`ID_KEYS`]), in UTF-16 code units.
pub const MAX_ID_CHARS: usize = 1024;
/// Longest `title`, in UTF-16 code units.
pub const MAX_TITLE_CHARS: usize = 4096;
/// Most items of any array.
pub const MAX_ARRAY_ITEMS: usize = crate::export::fit::MAX_ARRAY_ITEMS;

/// JSON keys (anywhere in the record) whose strings are ids or names: at most [`MAX_ID_CHARS`].
pub const ID_KEYS: &[&str] = &[
    "sessionId",
    "deviceId",
    "hostname",
    "opencodeVersion",
    "daemonVersion",
    "projectId",
    "parentSessionId",
    "forkedFrom",
    "contentHash",
    "primaryAgent",
    "providerId",
    "modelId",
    "agent",
    "role",
    "id",
    "status",
    "priority",
    "finish",
];

/// JSON keys holding epoch-ms timestamps, at the top level and in `messages[]`.
pub const TIMESTAMP_KEYS: &[&str] = &[
    "createdAt",
    "updatedAt",
    "exportedAt",
    "archivedAt",
    "deletedAt",
    "completedAt",
    "revision",
];

/// The first rule `record` breaks, as one line naming the field (never its content), or `None`
/// when it keeps them all; `now` in epoch ms. The same walk, in the same order, as
/// `validateRecord` in `convex/convex/validate.ts`.
pub fn check(record: &SessionExport, now: i64) -> Option<String> {
    let value = serde_json::to_value(record).ok()?;
    if let Some(e) = walk(&value, "", "", now) {
        return Some(e.trim_start_matches('.').to_string());
    }
    (record.updated_at < record.created_at).then(|| {
        format!(
            "updatedAt ({}) is before createdAt ({})",
            record.updated_at, record.created_at
        )
    })
}

fn walk(x: &Value, path: &str, key: &str, now: i64) -> Option<String> {
    match x {
        // The record has no null field (optional ones are omitted): a null is a non-finite f64,
        // which serde_json writes as null.
        Value::Null => Some(format!("{path} is not a finite number")),
        Value::Number(n) => {
            let negative = n.as_i64().is_some_and(|i| i < 0) || n.as_f64().is_some_and(|f| f < 0.0);
            if negative {
                return Some(format!("{path} is negative"));
            }
            let over = match n.as_u64() {
                Some(u) => u > MAX_NUMBER,
                None => n.as_f64().is_some_and(|f| f > MAX_NUMBER as f64),
            };
            if over {
                return Some(format!("{path} is over {MAX_NUMBER}"));
            }
            let f = n.as_f64().unwrap_or(0.0);
            if key == "cost" && f > MAX_COST_USD {
                return Some(format!("{path} is over {MAX_COST_USD} USD"));
            }
            let top_or_message =
                path.starts_with(".messages[") || !path[1.min(path.len())..].contains('.');
            if TIMESTAMP_KEYS.contains(&key) && top_or_message {
                if f < MIN_TIMESTAMP_MS as f64 {
                    return Some(format!("{path} is before 2000-01-01"));
                }
                if f > (now + MAX_FUTURE_MS) as f64 {
                    return Some(format!("{path} is more than a day after now"));
                }
            }
            None
        }
        Value::String(s) => {
            let max = if ID_KEYS.contains(&key) {
                MAX_ID_CHARS
            } else if path == ".title" {
                MAX_TITLE_CHARS
            } else {
                MAX_STRING_CHARS
            };
            let len = utf16_len(s);
            (len > max).then(|| format!("{path} is longer than {max} characters ({len})"))
        }
        Value::Array(items) => {
            if items.len() > MAX_ARRAY_ITEMS {
                return Some(format!("{path} has more than {MAX_ARRAY_ITEMS} items"));
            }
            items
                .iter()
                .enumerate()
                .find_map(|(i, v)| walk(v, &format!("{path}[{i}]"), key, now))
        }
        Value::Object(fields) => fields
            .iter()
            .find_map(|(k, v)| walk(v, &format!("{path}.{k}"), k, now)),
        Value::Bool(_) => None,
    }
}

fn utf16_len(s: &str) -> usize {
    s.encode_utf16().count()
}

/// Corrects every value of `record` that breaks a rule (see the table in the module doc) and
/// adds the corrected fields' names to `record.corrected`. "Now" is `record.exported_at`. A
/// record that keeps the rules is left unchanged.
pub fn correct(record: &mut SessionExport) {
    let now = record.exported_at;
    let mut f = Fix {
        now,
        fixed: BTreeSet::new(),
    };
    let r = record;

    // Timestamps.
    if r.exported_at < MIN_TIMESTAMP_MS {
        // Only a clock before 2000 gets here: nothing later can be trusted more.
        r.exported_at = MIN_TIMESTAMP_MS;
        f.mark("exportedAt");
    }
    if !f.in_range(r.updated_at) {
        r.updated_at = r.exported_at.max(MIN_TIMESTAMP_MS);
        f.mark("updatedAt");
    }
    if !f.in_range(r.created_at) || r.created_at > r.updated_at {
        r.created_at = r.updated_at;
        f.mark("createdAt");
        if r.duration_ms.take().is_some() {
            f.mark("durationMs");
        }
    }
    if r.archived_at.is_some_and(|t| !f.in_range(t)) {
        r.archived_at = None;
        f.mark("archivedAt");
    }
    if r.deleted_at.is_some_and(|t| !f.in_range(t)) {
        r.deleted_at = Some(r.exported_at);
        f.mark("deletedAt");
    }
    if r.duration_ms.is_some_and(|d| d < 0) {
        r.duration_ms = None;
        f.mark("durationMs");
    }
    if let Some(d) = &mut r.duration_ms {
        f.count_i64("durationMs", d);
    }
    if let Some(messages) = &mut r.messages {
        for m in messages.iter_mut() {
            if !f.in_range(m.created_at) {
                m.created_at = r.created_at;
                f.mark("messages.createdAt");
            }
            if m.completed_at.is_some_and(|t| !f.in_range(t)) {
                m.completed_at = None;
                f.mark("messages.completedAt");
            }
            f.id("messages.id", &mut m.id);
            f.id("messages.role", &mut m.role);
            f.id_opt("messages.agent", &mut m.agent);
            f.id_opt("messages.providerId", &mut m.provider_id);
            f.id_opt("messages.modelId", &mut m.model_id);
            f.id_opt("messages.finish", &mut m.finish);
            if let Some(e) = &mut m.error {
                f.text("messages.error", e, MAX_STRING_CHARS);
            }
            f.text("messages.text", &mut m.text, MAX_STRING_CHARS);
        }
    }

    // Ids, names and other strings.
    f.id("sessionId", &mut r.session_id);
    f.id("deviceId", &mut r.device_id);
    f.id("hostname", &mut r.hostname);
    f.id("opencodeVersion", &mut r.opencode_version);
    f.id("daemonVersion", &mut r.daemon_version);
    f.id("projectId", &mut r.project_id);
    f.id_opt("parentSessionId", &mut r.parent_session_id);
    f.id_opt("forkedFrom", &mut r.forked_from);
    f.id("contentHash", &mut r.content_hash);
    f.id_opt("primaryAgent", &mut r.primary_agent);
    f.text("title", &mut r.title, MAX_TITLE_CHARS);
    f.text(
        "projectDirectory",
        &mut r.project_directory,
        MAX_STRING_CHARS,
    );
    if let Some(w) = &mut r.project_worktree {
        f.text("projectWorktree", w, MAX_STRING_CHARS);
    }
    for a in &mut r.agents_used {
        f.text("agentsUsed", a, MAX_STRING_CHARS);
    }
    if let Some(e) = &mut r.error {
        f.error("error", e);
    }
    if let Some(todos) = &mut r.todos {
        for t in todos.iter_mut() {
            f.text("todos.content", &mut t.content, MAX_STRING_CHARS);
            f.id("todos.status", &mut t.status);
            f.id("todos.priority", &mut t.priority);
        }
    }

    // Counts, token totals and costs.
    f.count("messageCount", &mut r.message_count);
    f.count("userMessageCount", &mut r.user_message_count);
    f.count("assistantMessageCount", &mut r.assistant_message_count);
    f.count("redactions", &mut r.redactions);
    let t = &mut r.todo_stats;
    for (name, v) in [
        ("total", &mut t.total),
        ("completed", &mut t.completed),
        ("cancelled", &mut t.cancelled),
        ("pending", &mut t.pending),
        ("inProgress", &mut t.in_progress),
    ] {
        f.count(&format!("todoStats.{name}"), v);
    }
    f.changes("codeChanges", &mut r.code_changes);
    f.changes("worktreeChanges", &mut r.worktree_changes);
    f.tokens("tokens", &mut r.tokens);
    f.cost("cost", &mut r.cost);
    f.models("models", &mut r.models);
    f.tools("tools", &mut r.tools);
    f.tools("skills", &mut r.skills);
    if let Some(i) = &mut r.inherited {
        f.count("inherited.messageCount", &mut i.message_count);
        f.tokens("inherited.tokens", &mut i.tokens);
        f.cost("inherited.cost", &mut i.cost);
        f.models("inherited.models", &mut i.models);
    }
    if let Some(v) = &mut r.reverted {
        f.count("reverted.messageCount", &mut v.message_count);
        f.tokens("reverted.tokens", &mut v.tokens);
        f.cost("reverted.cost", &mut v.cost);
    }
    for c in &mut r.children {
        f.id("children.sessionId", &mut c.session_id);
        f.text("children.title", &mut c.title, MAX_STRING_CHARS);
        f.id_opt("children.agent", &mut c.agent);
        f.count("children.messageCount", &mut c.message_count);
        f.tokens("children.tokens", &mut c.tokens);
        f.cost("children.cost", &mut c.cost);
        if c.models.len() > MAX_ARRAY_ITEMS {
            c.models.truncate(MAX_ARRAY_ITEMS);
            f.mark("children.models");
        }
        f.models("children.models", &mut c.models);
        if let Some(e) = &mut c.error {
            f.error("children.error", e);
        }
    }
    if let Some(u) = &mut r.rollup {
        f.count("rollup.sessions", &mut u.sessions);
        f.count("rollup.messageCount", &mut u.message_count);
        f.tokens("rollup.tokens", &mut u.tokens);
        f.cost("rollup.cost", &mut u.cost);
        f.models("rollup.models", &mut u.models);
        f.tools("rollup.tools", &mut u.tools);
        f.tools("rollup.skills", &mut u.skills);
    }

    if !f.fixed.is_empty() {
        let mut all: BTreeSet<String> = r.corrected.drain(..).collect();
        all.extend(f.fixed);
        r.corrected = all.into_iter().collect();
    }
}

/// The corrections made so far, and "now".
struct Fix {
    now: i64,
    fixed: BTreeSet<String>,
}

impl Fix {
    fn mark(&mut self, path: &str) {
        self.fixed.insert(path.to_string());
    }

    fn in_range(&self, t: i64) -> bool {
        (MIN_TIMESTAMP_MS..=self.now.saturating_add(MAX_FUTURE_MS)).contains(&t)
    }

    fn count(&mut self, path: &str, v: &mut u64) {
        if *v > MAX_NUMBER {
            *v = MAX_NUMBER;
            self.mark(path);
        }
    }

    fn count_i64(&mut self, path: &str, v: &mut i64) {
        if *v > MAX_NUMBER as i64 {
            *v = MAX_NUMBER as i64;
            self.mark(path);
        }
    }

    fn cost(&mut self, path: &str, v: &mut f64) {
        let fixed = if v.is_finite() {
            v.clamp(0.0, MAX_COST_USD)
        } else {
            0.0
        };
        // `!=` is true for NaN too.
        if fixed != *v {
            *v = fixed;
            self.mark(path);
        }
    }

    fn tokens(&mut self, path: &str, t: &mut TokenUsage) {
        for (name, v) in [
            ("input", &mut t.input),
            ("output", &mut t.output),
            ("reasoning", &mut t.reasoning),
            ("cacheRead", &mut t.cache_read),
            ("cacheWrite", &mut t.cache_write),
        ] {
            self.count(&format!("{path}.{name}"), v);
        }
    }

    fn changes(&mut self, path: &str, c: &mut CodeChanges) {
        for (name, v) in [
            ("additions", &mut c.additions),
            ("deletions", &mut c.deletions),
            ("filesChanged", &mut c.files_changed),
        ] {
            self.count(&format!("{path}.{name}"), v);
        }
    }

    fn models(&mut self, path: &str, models: &mut [ModelUsage]) {
        for m in models {
            self.id(&format!("{path}.providerId"), &mut m.provider_id);
            self.id(&format!("{path}.modelId"), &mut m.model_id);
            self.count(&format!("{path}.messages"), &mut m.messages);
            self.tokens(&format!("{path}.tokens"), &mut m.tokens);
            self.cost(&format!("{path}.cost"), &mut m.cost);
        }
    }

    fn tools(&mut self, path: &str, tools: &mut [ToolUsage]) {
        for t in tools {
            self.text(&format!("{path}.name"), &mut t.name, MAX_STRING_CHARS);
            self.count(&format!("{path}.calls"), &mut t.calls);
            self.count(&format!("{path}.errors"), &mut t.errors);
            self.count(&format!("{path}.durationMs"), &mut t.duration_ms);
        }
    }

    fn error(&mut self, path: &str, e: &mut ErrorInfo) {
        self.text(&format!("{path}.name"), &mut e.name, MAX_STRING_CHARS);
        self.text(&format!("{path}.message"), &mut e.message, MAX_STRING_CHARS);
    }

    fn id(&mut self, path: &str, s: &mut String) {
        self.text(path, s, MAX_ID_CHARS);
    }

    fn id_opt(&mut self, path: &str, s: &mut Option<String>) {
        if let Some(s) = s {
            self.id(path, s);
        }
    }

    /// Cuts `s` to at most `max` UTF-16 code units, on a character boundary.
    fn text(&mut self, path: &str, s: &mut String, max: usize) {
        // A string of at most `max` bytes has at most `max` UTF-16 units.
        if s.len() <= max || utf16_len(s) <= max {
            return;
        }
        let mut units = 0;
        let mut end = 0;
        for (i, c) in s.char_indices() {
            if units + c.len_utf16() > max {
                break;
            }
            units += c.len_utf16();
            end = i + c.len_utf8();
        }
        s.truncate(end);
        self.mark(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-21, the fixture's time: "now" of the tests.
    const NOW: i64 = 1_795_300_000_000;

    /// The full fixture record (every optional field set), exported at [`NOW`], valid.
    fn full() -> SessionExport {
        let mut r: SessionExport = serde_json::from_str(include_str!(
            "../../../convex/tests/fixtures/full-record.json"
        ))
        .unwrap();
        r.corrected.clear();
        r.exported_at = NOW;
        r.revision = NOW;
        r
    }

    type Patch = fn(&mut SessionExport);
    type Expect = fn(&SessionExport) -> bool;

    /// The table: each bad value, the field(s) named in `corrected`, and what the value became.
    #[test]
    fn each_bad_value_is_corrected_named_and_the_record_then_keeps_every_rule() {
        let cases: &[(&str, Patch, &[&str], Expect)] = &[
            (
                "createdAt 0 (before 2000)",
                |r| r.created_at = 0,
                &["createdAt", "durationMs"],
                |r| r.created_at == r.updated_at && r.duration_ms.is_none(),
            ),
            (
                "createdAt in the far future",
                |r| r.created_at = i64::MAX,
                &["createdAt", "durationMs"],
                |r| r.created_at == r.updated_at,
            ),
            (
                "createdAt after updatedAt",
                |r| r.created_at = r.updated_at + 1,
                &["createdAt", "durationMs"],
                |r| r.created_at == r.updated_at,
            ),
            (
                "updatedAt more than a day ahead",
                |r| r.updated_at = NOW + 2 * MAX_FUTURE_MS,
                &["updatedAt"],
                |r| r.updated_at == NOW,
            ),
            (
                "updatedAt negative",
                |r| r.updated_at = -5,
                &["updatedAt"],
                |r| r.updated_at == NOW,
            ),
            (
                "archivedAt before 2000",
                |r| r.archived_at = Some(12),
                &["archivedAt"],
                |r| r.archived_at.is_none(),
            ),
            (
                "deletedAt in the future",
                |r| r.deleted_at = Some(NOW + 2 * MAX_FUTURE_MS),
                &["deletedAt"],
                |r| r.deleted_at == Some(NOW),
            ),
            (
                "a message created in 1970",
                |r| r.messages.as_mut().unwrap()[0].created_at = 1,
                &["messages.createdAt"],
                |r| r.messages.as_ref().unwrap()[0].created_at == r.created_at,
            ),
            (
                "a message completed next year",
                |r| r.messages.as_mut().unwrap()[1].completed_at = Some(NOW + 365 * 86_400_000),
                &["messages.completedAt"],
                |r| r.messages.as_ref().unwrap()[1].completed_at.is_none(),
            ),
            (
                "a negative duration",
                |r| r.duration_ms = Some(-1),
                &["durationMs"],
                |r| r.duration_ms.is_none(),
            ),
            (
                "a duration over 2^53",
                |r| r.duration_ms = Some(i64::MAX),
                &["durationMs"],
                |r| r.duration_ms == Some(MAX_NUMBER as i64),
            ),
            (
                "cost NaN",
                |r| r.cost = f64::NAN,
                &["cost"],
                |r| r.cost == 0.0,
            ),
            (
                "cost infinite",
                |r| r.cost = f64::INFINITY,
                &["cost"],
                |r| r.cost == 0.0,
            ),
            (
                "cost negative",
                |r| r.cost = -0.5,
                &["cost"],
                |r| r.cost == 0.0,
            ),
            (
                "cost 1e300",
                |r| r.cost = 1e300,
                &["cost"],
                |r| r.cost == MAX_COST_USD,
            ),
            (
                "a model's cost and a child's model's cost",
                |r| {
                    r.models[0].cost = f64::NEG_INFINITY;
                    r.children[0].models[0].cost = 2e9;
                },
                &["children.models.cost", "models.cost"],
                |r| r.models[0].cost == 0.0 && r.children[0].models[0].cost == MAX_COST_USD,
            ),
            (
                "token counts over 2^53",
                |r| {
                    r.tokens.input = u64::MAX;
                    r.rollup.as_mut().unwrap().tokens.cache_write = MAX_NUMBER + 1;
                },
                &["rollup.tokens.cacheWrite", "tokens.input"],
                |r| {
                    r.tokens.input == MAX_NUMBER
                        && r.rollup.as_ref().unwrap().tokens.cache_write == MAX_NUMBER
                },
            ),
            (
                "a tool's duration over 2^53",
                |r| r.tools[0].duration_ms = u64::MAX,
                &["tools.durationMs"],
                |r| r.tools[0].duration_ms == MAX_NUMBER,
            ),
            (
                "a hostname of 2000 characters",
                |r| r.hostname = "h".repeat(2000),
                &["hostname"],
                |r| r.hostname == "h".repeat(MAX_ID_CHARS),
            ),
            (
                "a model id of astral characters (2 UTF-16 units each)",
                |r| r.models[0].model_id = "𝄞".repeat(600),
                &["models.modelId"],
                |r| r.models[0].model_id == "𝄞".repeat(MAX_ID_CHARS / 2),
            ),
            (
                "a title over 4096 UTF-16 units",
                |r| r.title = "t".repeat(5000),
                &["title"],
                |r| r.title.len() == MAX_TITLE_CHARS,
            ),
            (
                "a child with more models than an array may hold",
                |r| {
                    let m = r.children[0].models[0].clone();
                    r.children[0].models = vec![m; MAX_ARRAY_ITEMS + 1];
                },
                &["children.models"],
                |r| r.children[0].models.len() == MAX_ARRAY_ITEMS,
            ),
            (
                "a timestamp just inside the range is kept",
                |r| r.updated_at = NOW + MAX_FUTURE_MS,
                &[],
                |r| r.updated_at == NOW + MAX_FUTURE_MS,
            ),
        ];
        for (name, patch, fields, expect) in cases {
            let mut r = full();
            patch(&mut r);
            let broke = check(&r, NOW);
            assert_eq!(broke.is_some(), !fields.is_empty(), "{name}: {broke:?}");
            correct(&mut r);
            assert_eq!(r.corrected, *fields, "{name}");
            assert!(expect(&r), "{name}: not corrected as expected");
            assert_eq!(check(&r, NOW), None, "{name}: still breaks a rule");
        }
    }

    #[test]
    fn a_valid_record_is_left_unchanged() {
        let mut r = full();
        assert_eq!(check(&r, NOW), None);
        let before = r.clone();
        correct(&mut r);
        assert_eq!(r, before);
        assert!(!serde_json::to_string(&r).unwrap().contains("corrected"));
    }

    #[test]
    fn every_number_of_the_record_is_checked() {
        // Each numeric leaf of the fixture set to 2^53 in turn must break a rule: the walk
        // reaches every number (as the server's does).
        let value = serde_json::to_value(full()).unwrap();
        let mut paths = Vec::new();
        numbers(&value, &mut Vec::new(), &mut paths);
        assert!(paths.len() > 50, "{}", paths.len());
        for path in paths {
            let mut v = value.clone();
            let mut at = &mut v;
            for k in &path {
                at = match k {
                    Key::Field(f) => &mut at[f.as_str()],
                    Key::Index(i) => &mut at[*i],
                };
            }
            *at = serde_json::json!(MAX_NUMBER + 1);
            let r: SessionExport = serde_json::from_value(v).unwrap();
            assert!(check(&r, NOW).is_some(), "{path:?} is not checked");
            let mut fixed = r.clone();
            correct(&mut fixed);
            assert_eq!(check(&fixed, NOW), None, "{path:?} is not corrected");
        }
    }

    #[derive(Debug, Clone)]
    enum Key {
        Field(String),
        Index(usize),
    }

    fn unchecked(at: &[Key]) -> bool {
        matches!(at, [Key::Field(f)]
            if f == "schemaVersion" || f == "revision" || f == "exportedAt")
    }

    fn numbers(v: &Value, at: &mut Vec<Key>, out: &mut Vec<Vec<Key>>) {
        match v {
            // The schema version is a u32 (cannot exceed the limit); the revision is set by the
            // tracker after correcting; `exportedAt` is "now" itself.
            Value::Number(_) if !unchecked(at) => out.push(at.clone()),
            Value::Array(items) => {
                for (i, x) in items.iter().enumerate() {
                    at.push(Key::Index(i));
                    numbers(x, at, out);
                    at.pop();
                }
            }
            Value::Object(fields) => {
                for (k, x) in fields {
                    at.push(Key::Field(k.clone()));
                    numbers(x, at, out);
                    at.pop();
                }
            }
            _ => {}
        }
    }

    /// The limits and key sets here are those of `convex/convex/validate.ts`: a change there
    /// must be made here too.
    #[test]
    fn the_rules_are_those_of_the_deployment() {
        let ts = include_str!("../../../convex/convex/validate.ts");
        for line in [
            "export const MIN_TIMESTAMP_MS = Date.UTC(2000, 0, 1);",
            "export const MAX_FUTURE_MS = 86_400_000;",
            "export const MAX_NUMBER = Number.MAX_SAFE_INTEGER;",
            "export const MAX_COST_USD = 1e9;",
            "export const MAX_STRING_CHARS = 1 << 20;",
            "export const MAX_ID_CHARS = 1024;",
            "export const MAX_TITLE_CHARS = 4096;",
            "export const MAX_ARRAY_ITEMS = 4096;",
        ] {
            assert!(ts.contains(line), "validate.ts no longer says {line}");
        }
        assert_eq!(MIN_TIMESTAMP_MS, 946_684_800_000); // Date.UTC(2000, 0, 1)
        let set = |name: &str| -> Vec<String> {
            let start = ts.find(&format!("const {name} = new Set([")).unwrap();
            let body = &ts[start..];
            let body = &body[body.find('[').unwrap() + 1..body.find("])").unwrap()];
            body.split(',')
                .map(|s| s.trim().trim_matches('"').to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        assert_eq!(set("ID_KEYS"), ID_KEYS);
        assert_eq!(set("TIMESTAMP_KEYS"), TIMESTAMP_KEYS);
    }
}
