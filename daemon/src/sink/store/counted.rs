//! What one stored session adds to the totals ([`Counted`]): the one counting rule every report
//! sums, computed once per upsert and kept in the store's columns and child tables.
//!
//! The rule is the Convex deployment's (`counted` in `convex/convex/aggregates.ts`), so the
//! local reports and the deployment's totals agree:
//! - a **top-level** session (no `parentSessionId`) counts itself and every subagent session
//!   below it: its `rollup` when it has one (the daemon puts every descendant, however deep,
//!   into `children` and `rollup`), else its own figures;
//! - **minus** what a fork `inherited`: the copied prefix was spent in the session it was
//!   copied from, which counts it (messages, tokens, cost and per-model usage);
//! - a **subagent** session stored as its own row (`parentSessionId` set, written when
//!   `export.skip_subagent_sessions = false`) counts nothing: its parent's rollup holds it. So the
//!   totals are the same whether subagents are exported as rows or only rolled up;
//! - a reverted turn stays counted (its money was spent).
//!
//! Per agent: the top-level session's own spend (its own figures minus what it inherited) counts
//! under its `primaryAgent` (`(none)` without one) — OpenCode's internal `compaction`, `title`
//! and `summary` steps included, since the record has no per-agent usage — and each subagent's
//! under the subagent's agent; so the agent rows of a session sum to its counted total. Per tool and skill: the rollup's
//! lists (own calls plus the subagents'), else the session's own; a fork's copied tool calls
//! are counted again (the record does not say which calls were copied). Errors by name: the
//! session's own terminal error and each subagent's.

use std::collections::BTreeMap;

use crate::export::{ModelUsage, SessionExport, TokenUsage, ToolUsage};

/// The agent name counted for a session without a primary agent.
pub const NO_AGENT: &str = "(none)";

/// Figures of one row of a total (the shape every report sums).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    /// Messages.
    pub messages: i64,
    /// Tokens by kind (signed while subtracting what a fork inherited; never negative in the
    /// end, clamped at 0).
    pub tokens: Tokens,
    /// USD.
    pub cost: f64,
}

/// Tokens by kind, signed (see [`Figures::tokens`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    /// `tokens.input`.
    pub input: i64,
    /// `tokens.output`.
    pub output: i64,
    /// `tokens.reasoning`.
    pub reasoning: i64,
    /// `tokens.cache.read`.
    pub cache_read: i64,
    /// `tokens.cache.write`.
    pub cache_write: i64,
}

impl Tokens {
    fn of(t: &TokenUsage) -> Tokens {
        let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        Tokens {
            input: i(t.input),
            output: i(t.output),
            reasoning: i(t.reasoning),
            cache_read: i(t.cache_read),
            cache_write: i(t.cache_write),
        }
    }

    fn add(&mut self, o: &Tokens, sign: i64) {
        self.input = self.input.saturating_add(sign * o.input);
        self.output = self.output.saturating_add(sign * o.output);
        self.reasoning = self.reasoning.saturating_add(sign * o.reasoning);
        self.cache_read = self.cache_read.saturating_add(sign * o.cache_read);
        self.cache_write = self.cache_write.saturating_add(sign * o.cache_write);
    }

    fn clamped(self) -> Tokens {
        Tokens {
            input: self.input.max(0),
            output: self.output.max(0),
            reasoning: self.reasoning.max(0),
            cache_read: self.cache_read.max(0),
            cache_write: self.cache_write.max(0),
        }
    }
}

impl Figures {
    fn add(&mut self, messages: u64, tokens: &TokenUsage, cost: f64, sign: i64) {
        let m = i64::try_from(messages).unwrap_or(i64::MAX);
        self.messages = self.messages.saturating_add(sign * m);
        self.tokens.add(&Tokens::of(tokens), sign);
        self.cost += sign as f64 * cost;
    }

    fn clamped(self) -> Figures {
        Figures {
            messages: self.messages.max(0),
            tokens: self.tokens.clamped(),
            cost: self.cost.max(0.0),
        }
    }
}

/// Usage of one tool or skill, as counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ToolFigures {
    /// Calls.
    pub calls: i64,
    /// Calls that ended in `error`.
    pub errors: i64,
    /// Time spent in finished calls (ms).
    pub duration_ms: i64,
}

/// What one session adds to the totals; see the module doc. `None` from [`counted`] for a
/// subagent row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counted {
    /// Sessions counted: 1 + the subagent sessions inside.
    pub sessions: i64,
    /// Messages, tokens and cost.
    pub figures: Figures,
    /// Per (provider, model), net of what a fork inherited; models left with no message and no
    /// cost are dropped.
    pub models: BTreeMap<(String, String), Figures>,
    /// Per agent (see the module doc).
    pub agents: BTreeMap<String, Figures>,
    /// Per tool name.
    pub tools: BTreeMap<String, ToolFigures>,
    /// Per skill name.
    pub skills: BTreeMap<String, ToolFigures>,
    /// Turns that ended in an error, by error name (the session's and its subagents').
    pub errors: BTreeMap<String, i64>,
}

fn add_models(into: &mut BTreeMap<(String, String), Figures>, list: &[ModelUsage], sign: i64) {
    for m in list {
        into.entry((m.provider_id.clone(), m.model_id.clone()))
            .or_default()
            .add(m.messages, &m.tokens, m.cost, sign);
    }
}

fn add_tools(into: &mut BTreeMap<String, ToolFigures>, list: &[ToolUsage]) {
    let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    for t in list {
        let e = into.entry(t.name.clone()).or_default();
        e.calls = e.calls.saturating_add(i(t.calls));
        e.errors = e.errors.saturating_add(i(t.errors));
        e.duration_ms = e.duration_ms.saturating_add(i(t.duration_ms));
    }
}

/// What `r` adds to the totals (see the module doc); `None` for a subagent row.
pub fn counted(r: &SessionExport) -> Option<Counted> {
    if r.parent_session_id.is_some() {
        return None;
    }
    let mut c = Counted::default();
    let mut own = Figures::default();
    own.add(r.message_count, &r.tokens, r.cost, 1);
    let mut models = BTreeMap::new();
    match &r.rollup {
        Some(rollup) => {
            c.sessions = i64::try_from(rollup.sessions.max(1)).unwrap_or(i64::MAX);
            c.figures
                .add(rollup.message_count, &rollup.tokens, rollup.cost, 1);
            add_models(&mut models, &rollup.models, 1);
            add_tools(&mut c.tools, &rollup.tools);
            add_tools(&mut c.skills, &rollup.skills);
        }
        None => {
            c.sessions = 1;
            c.figures = own;
            add_models(&mut models, &r.models, 1);
            add_tools(&mut c.tools, &r.tools);
            add_tools(&mut c.skills, &r.skills);
        }
    }
    if let Some(inh) = &r.inherited {
        c.figures.add(inh.message_count, &inh.tokens, inh.cost, -1);
        own.add(inh.message_count, &inh.tokens, inh.cost, -1);
        add_models(&mut models, &inh.models, -1);
    }
    c.figures = c.figures.clamped();
    c.models = models
        .into_iter()
        .filter(|(_, f)| f.messages > 0 || f.cost > 0.0)
        .map(|(k, f)| (k, f.clamped()))
        .collect();
    let agent = r.primary_agent.clone().unwrap_or_else(|| NO_AGENT.into());
    *c.agents.entry(agent).or_default() = own.clamped();
    for child in &r.children {
        let agent = child.agent.clone().unwrap_or_else(|| NO_AGENT.into());
        c.agents
            .entry(agent)
            .or_default()
            .add(child.message_count, &child.tokens, child.cost, 1);
    }
    if let Some(e) = &r.error {
        *c.errors.entry(e.name.clone()).or_default() += 1;
    }
    for child in &r.children {
        if let Some(e) = &child.error {
            *c.errors.entry(e.name.clone()).or_default() += 1;
        }
    }
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::{ChildSummary, Inherited, Rollup};

    fn tokens(input: u64, output: u64) -> TokenUsage {
        TokenUsage {
            input,
            output,
            ..TokenUsage::default()
        }
    }

    fn model(id: &str, messages: u64, cost: f64, input: u64) -> ModelUsage {
        ModelUsage {
            provider_id: "p".into(),
            model_id: id.into(),
            messages,
            tokens: tokens(input, 0),
            cost,
        }
    }

    fn record() -> SessionExport {
        let text = include_str!("../../../../convex/tests/fixtures/full-record.json");
        let mut r: SessionExport = serde_json::from_str(text).unwrap();
        r.parent_session_id = None;
        r.inherited = None;
        r.rollup = None;
        r.children = Vec::new();
        r.error = None;
        r.primary_agent = Some("build".into());
        r.message_count = 4;
        r.tokens = tokens(100, 10);
        r.cost = 1.0;
        r.models = vec![model("a", 2, 1.0, 100)];
        r
    }

    #[test]
    fn a_plain_session_counts_its_own_figures() {
        let c = counted(&record()).unwrap();
        assert_eq!(c.sessions, 1);
        assert_eq!(c.figures.messages, 4);
        assert_eq!(c.figures.tokens.input, 100);
        assert_eq!(c.figures.cost, 1.0);
        assert_eq!(c.models.len(), 1);
        assert_eq!(c.agents["build"].cost, 1.0);
    }

    #[test]
    fn a_subagent_row_counts_nothing() {
        let mut r = record();
        r.parent_session_id = Some("ses_parent".into());
        assert_eq!(counted(&r), None);
    }

    #[test]
    fn a_parent_counts_its_rollup_and_its_agents_split_the_cost() {
        let mut r = record();
        r.children = vec![ChildSummary {
            session_id: "ses_c".into(),
            title: "c".into(),
            agent: Some("general".into()),
            message_count: 2,
            tokens: tokens(50, 5),
            cost: 0.5,
            models: vec![model("b", 1, 0.5, 50)],
            error: Some(crate::export::ErrorInfo {
                name: "APIError".into(),
                message: String::new(),
            }),
        }];
        r.rollup = Some(Rollup {
            sessions: 2,
            message_count: 6,
            tokens: tokens(150, 15),
            cost: 1.5,
            models: vec![model("a", 2, 1.0, 100), model("b", 1, 0.5, 50)],
            tools: Vec::new(),
            skills: Vec::new(),
        });
        let c = counted(&r).unwrap();
        assert_eq!(c.sessions, 2);
        assert_eq!(c.figures.cost, 1.5);
        assert_eq!(c.figures.tokens.input, 150);
        assert_eq!(c.models.len(), 2);
        assert_eq!(c.agents["build"].cost, 1.0);
        assert_eq!(c.agents["general"].cost, 0.5);
        assert_eq!(c.errors["APIError"], 1);
        let agent_sum: f64 = c.agents.values().map(|f| f.cost).sum();
        assert_eq!(agent_sum, c.figures.cost);
    }

    #[test]
    fn a_fork_subtracts_what_it_inherited_and_drops_models_left_empty() {
        let mut r = record();
        r.models = vec![model("a", 2, 1.0, 100), model("old", 1, 0.25, 30)];
        r.message_count = 5;
        r.cost = 1.25;
        r.tokens = tokens(130, 10);
        r.inherited = Some(Inherited {
            message_count: 1,
            tokens: tokens(30, 0),
            cost: 0.25,
            models: vec![model("old", 1, 0.25, 30)],
        });
        let c = counted(&r).unwrap();
        assert_eq!(c.figures.messages, 4);
        assert_eq!(c.figures.tokens.input, 100);
        assert_eq!(c.figures.cost, 1.0);
        assert_eq!(
            c.models.keys().cloned().collect::<Vec<_>>(),
            vec![("p".to_string(), "a".to_string())]
        );
        assert_eq!(c.agents["build"].cost, 1.0);
    }
}
