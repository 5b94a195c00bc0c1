//! The tracker: turns what a source observes into the moments the agent announces (OpenCode's
//! `session.idle`, `session.error`, `session.deleted`) and decides when each session is
//! exported. It holds **no source handle and does no IO**: it says what it needs read, takes
//! the answers, and decides; the pass that drives it ([`crate::daemon::pass`]) does the reading.
//!
//! # One pass
//! 1. [`Tracker::changes`] takes what the source says changed ([`Changes`]) and answers with a
//!    [`Plan`]: the tracked sessions that are gone; the sessions to observe (marker moved, or
//!    new) join the tracker's backlog, which [`Tracker::to_observe`] hands out a chunk at a time
//!    (the first pass over a long history is many bounded passes, each committed on its own). A subagent session (with `export.skip_subagent_sessions`) is not tracked on its own:
//!    its change marks its exported parent for a re-export one debounce window later
//!    ([`rules::child_changed`]).
//! 2. For each session to observe, [`Tracker::observed`] takes the source's [`Observation`]
//!    (busy or ended) and says whether a full snapshot is needed now: to export it (already
//!    due: a turn that ended long ago) or to keep a record in case it is deleted before its
//!    export (a new session, or a new end of turn).
//! 3. [`Tracker::due`] lists the sessions whose timer has run out ([`rules::due`]).
//! 4. After building a record, [`Tracker::exported`] (or [`Tracker::recorded`]) notes it.
//! 5. [`Tracker::take_writes`] hands over the state to persist with the pass's records, in one
//!    outbox commit.
//!
//! The rules themselves are pure functions in [`rules`], tested by table; the persisted state
//! and its keys are in [`state`].
//!
//! # Time
//! `now_ms` is passed in (the wall clock in the daemon, read after the source's change read so
//! a deletion is never stamped before it was seen; a virtual clock in the replay test).

pub mod rules;
pub mod state;

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::source::{ChangeMarker, Changes, Observation, SessionId};
pub use rules::{Mode, Rules};
pub use state::{
    held_key, record_key, state_key, Ending, ExportKey, Phase, SessionState, HELD_PREFIX,
    RECORD_PREFIX, STATE_PREFIX,
};

/// Why a session is exported: the moment the agent announces, inferred from its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Trigger {
    /// `session.idle`: the turn ended.
    #[serde(rename = "session.idle")]
    Idle,
    /// `session.error`: the turn ended on an error (then idle).
    #[serde(rename = "session.error")]
    Error,
    /// No event from the agent: the turn never completed and went stale.
    #[serde(rename = "stale")]
    Stale,
    /// `session.deleted`.
    #[serde(rename = "session.deleted")]
    Deleted,
}

impl Trigger {
    /// The name used in logs, `status` and the transitions log (`session.idle`, …, `stale`).
    pub fn name(self) -> &'static str {
        match self {
            Trigger::Idle => "session.idle",
            Trigger::Error => "session.error",
            Trigger::Stale => "stale",
            Trigger::Deleted => "session.deleted",
        }
    }
}

/// What [`Tracker::changes`] asks the pass to do. The sessions to observe go to the tracker's
/// backlog ([`Tracker::to_observe`]), so a pass can observe them a chunk at a time.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Tracked sessions that are gone.
    pub gone: Vec<Gone>,
    /// Session heads the source listed (all of them on a full read).
    pub heads: usize,
}

/// A tracked session that is gone from the source.
#[derive(Debug, PartialEq, Eq)]
pub struct Gone {
    /// The session.
    pub id: SessionId,
    /// What it exports: [`Trigger::Deleted`] when a record of it was built.
    pub trigger: Option<Trigger>,
    /// Its record when it is not stored yet (a version-1 state's record still to be
    /// migrated); otherwise the record is under [`record_key`] in the `state` tree.
    pub unstored_record: Option<Vec<u8>>,
}

/// The `state` tree writes of a pass ([`Tracker::take_writes`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StateWrites {
    /// `(key, value)` puts.
    pub puts: Vec<(Vec<u8>, Vec<u8>)>,
    /// Keys to remove.
    pub removes: Vec<Vec<u8>>,
}

/// What [`Tracker::observed`] needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing more.
    Nothing,
    /// A snapshot, to export now.
    Export(Trigger),
    /// A snapshot, to keep its record (then [`Tracker::recorded`]), built as for this trigger
    /// (the one its current phase would export as).
    Record(Trigger),
}

/// The in-memory tracker; see the module docs.
#[derive(Debug)]
pub struct Tracker {
    rules: Rules,
    sessions: HashMap<SessionId, SessionState>,
    /// Sessions with a timer pending: checked by [`Tracker::due`].
    watching: HashSet<SessionId>,
    /// Markers of subagent sessions (with `skip_subagent_sessions`), to notice a child that
    /// changes after its parent was exported. Not persisted: the first look after a start
    /// fills it.
    child_markers: HashMap<SessionId, ChangeMarker>,
    /// State to write at the next commit (changed sessions).
    dirty: HashSet<SessionId>,
    /// State entries to remove at the next commit.
    removes: Vec<Vec<u8>>,
    /// Extra puts for the next commit (records of version-1 state being migrated).
    migrations: Vec<(Vec<u8>, Vec<u8>)>,
    /// Changed sessions not observed yet, with their new marker, by id. Not persisted: after a
    /// restart the source's first read lists every session, and those whose persisted marker
    /// differs come back here.
    backlog: BTreeMap<SessionId, ChangeMarker>,
}

impl Tracker {
    /// A tracker with no known session.
    pub fn new(rules: Rules) -> Tracker {
        Tracker {
            rules,
            sessions: HashMap::new(),
            watching: HashSet::new(),
            child_markers: HashMap::new(),
            dirty: HashSet::new(),
            removes: Vec::new(),
            migrations: Vec::new(),
            backlog: BTreeMap::new(),
        }
    }

    /// A tracker resumed from persisted `(key, value)` entries of the `state` tree: keys under
    /// [`STATE_PREFIX`] are read, others ignored; undecodable values are dropped with a
    /// warning, which only costs a re-export.
    pub fn resume(rules: Rules, entries: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Tracker {
        let mut t = Tracker::new(rules);
        for (k, v) in entries {
            let Some(id) = k.strip_prefix(STATE_PREFIX) else {
                continue;
            };
            let id = SessionId::new(String::from_utf8_lossy(id));
            match state::decode(&v) {
                Ok(decoded) => {
                    if let Some(record) = decoded.legacy_record {
                        t.migrations.push((record_key(&id), record));
                        t.dirty.insert(id.clone());
                    }
                    if rules::wants_timer(&decoded.state) {
                        t.watching.insert(id.clone());
                    }
                    t.sessions.insert(id, decoded.state);
                }
                Err(e) => {
                    tracing::warn!(session_id = %id, error = %e, "dropping undecodable tracker state")
                }
            }
        }
        t
    }

    /// Replaces the timing rules (a config reload); sessions already tracked keep their state
    /// and are judged by the new rules from the next pass on.
    pub fn set_rules(&mut self, rules: Rules) {
        self.rules = rules;
    }

    /// The rules in force.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Number of tracked sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// True when `id` is tracked.
    pub fn tracks(&self, id: &SessionId) -> bool {
        self.sessions.contains_key(id)
    }

    /// True when no session is tracked.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// The state of one session.
    pub fn state(&self, id: &SessionId) -> Option<&SessionState> {
        self.sessions.get(id)
    }

    /// True when a timer is pending (a pass may export something though the source did not
    /// change).
    pub fn has_timers(&self) -> bool {
        !self.watching.is_empty()
    }

    /// Step 1 of a pass: what to observe and what is gone, from the source's `changes`.
    pub fn changes(&mut self, changes: Changes, now_ms: i64) -> Plan {
        let (heads, gone, fresh) = match changes {
            Changes::None => return Plan::default(),
            Changes::Full { heads, fresh } => {
                let listed: HashSet<&SessionId> = heads.iter().map(|h| &h.id).collect();
                let gone: Vec<SessionId> = self
                    .sessions
                    .keys()
                    .filter(|id| !listed.contains(id))
                    .cloned()
                    .collect();
                (heads, gone, fresh)
            }
            Changes::Delta { heads, gone } => (heads, gone, false),
        };
        let mut plan = Plan {
            heads: heads.len(),
            ..Plan::default()
        };
        for head in heads {
            if let (true, Some(parent)) = (self.rules.skip_subagent_sessions, &head.parent_id) {
                let previous = self.child_markers.insert(head.id.clone(), head.marker);
                if rules::child_changed(previous, head.marker, fresh) {
                    if let Some(p) = self.sessions.get_mut(parent) {
                        if p.exported.is_some() {
                            p.children_changed_at_ms = Some(now_ms);
                            self.watching.insert(parent.clone());
                            self.dirty.insert(parent.clone());
                        }
                    }
                }
                continue;
            }
            if self
                .sessions
                .get(&head.id)
                .is_some_and(|s| s.marker == head.marker)
            {
                continue;
            }
            self.backlog.insert(head.id, head.marker);
        }
        for id in gone {
            self.child_markers.remove(&id);
            self.backlog.remove(&id);
            let Some(state) = self.sessions.remove(&id) else {
                continue; // A child, or a session never tracked.
            };
            self.watching.remove(&id);
            self.dirty.remove(&id);
            self.removes.push(state_key(&id));
            let key = record_key(&id);
            let unstored_record = self
                .migrations
                .iter()
                .position(|(k, _)| *k == key)
                .map(|i| self.migrations.swap_remove(i).1);
            self.removes.push(key);
            plan.gone.push(Gone {
                trigger: rules::on_gone(&state),
                id,
                unstored_record,
            });
        }
        plan
    }

    /// Up to `n` sessions of the backlog to observe now (each with its new marker), taken out of
    /// it in id order.
    pub fn to_observe(&mut self, n: usize) -> Vec<(SessionId, ChangeMarker)> {
        let mut out = Vec::with_capacity(n.min(self.backlog.len()));
        while out.len() < n {
            let Some(next) = self.backlog.pop_first() else {
                break;
            };
            out.push(next);
        }
        out
    }

    /// Changed sessions still to observe.
    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }

    /// Step 2: the source's observation of `id` (`None`: gone since the change read; the next
    /// pass sees it gone). Says whether a snapshot is needed.
    pub fn observed(
        &mut self,
        id: &SessionId,
        marker: ChangeMarker,
        observation: Option<&Observation>,
        now_ms: i64,
        mode: Mode,
    ) -> Need {
        let Some(observation) = observation else {
            return Need::Nothing;
        };
        let previous = self.sessions.get(id);
        let is_new = previous.is_none();
        let phase = rules::next_phase(previous.map(|p| &p.phase), observation, now_ms);
        let entering_end = rules::entering_end(&phase, previous.map(|p| &p.phase));
        let mut state = previous
            .cloned()
            .unwrap_or_else(|| SessionState::new(marker));
        state.marker = marker;
        state.phase = phase;
        let need = match rules::due(&state, now_ms, &self.rules, mode) {
            Some((trigger, _)) => Need::Export(trigger),
            None if is_new || entering_end => Need::Record(rules::trigger_of(&state.phase)),
            None => Need::Nothing,
        };
        self.arm(id, &state);
        self.sessions.insert(id.clone(), state);
        self.dirty.insert(id.clone());
        need
    }

    /// Step 3: the sessions due now, oldest id first, each with its trigger.
    pub fn due(&self, now_ms: i64, mode: Mode) -> Vec<(SessionId, Trigger)> {
        let mut due: Vec<(SessionId, Trigger)> = self
            .watching
            .iter()
            .filter_map(|id| {
                let state = self.sessions.get(id)?;
                let (trigger, _) = rules::due(state, now_ms, &self.rules, mode)?;
                Some((id.clone(), trigger))
            })
            .collect();
        due.sort_by(|a, b| a.0.cmp(&b.0));
        due
    }

    /// Step 4: `id` was exported at `now_ms` with a record whose digest is `digest`
    /// ([`state::record_digest`]). Returns true when that record differs from the stored one
    /// (the pass then writes it under [`record_key`]).
    pub fn exported(&mut self, id: &SessionId, now_ms: i64, mode: Mode, digest: String) -> bool {
        let Some(state) = self.sessions.get_mut(id) else {
            return false;
        };
        if let Some((_, ending)) = rules::due(state, now_ms, &self.rules, mode) {
            state.exported = Some(ExportKey {
                ending,
                archived_at: state.marker.archived_at,
            });
        }
        state.children_changed_at_ms = None;
        let changed = state.record_digest.as_deref() != Some(digest.as_str());
        state.record_digest = Some(digest);
        let state = state.clone();
        self.arm(id, &state);
        self.dirty.insert(id.clone());
        changed
    }

    /// The revision for a record of `id` exported now (`now_ms`): `max(previous + 1, now_ms)`,
    /// kept as the session's new revision (see [`crate::export::SessionExport::revision`]).
    /// 0 for a session not tracked.
    pub fn next_revision(&mut self, id: &SessionId, now_ms: i64) -> i64 {
        let Some(state) = self.sessions.get_mut(id) else {
            return 0;
        };
        state.revision = state.revision.saturating_add(1).max(now_ms);
        self.dirty.insert(id.clone());
        state.revision
    }

    /// The revision of the last record of `id` exported (0: none yet, or not tracked).
    pub fn revision(&self, id: &SessionId) -> i64 {
        self.sessions.get(id).map_or(0, |s| s.revision)
    }

    /// A record of `id` was built (not exported) with `digest`; true when it differs from the
    /// stored one.
    pub fn recorded(&mut self, id: &SessionId, digest: String) -> bool {
        let Some(state) = self.sessions.get_mut(id) else {
            return false;
        };
        let changed = state.record_digest.as_deref() != Some(digest.as_str());
        state.record_digest = Some(digest);
        self.dirty.insert(id.clone());
        changed
    }

    /// The snapshot for an export was gone (the session vanished between reads): nothing is
    /// exported now; the next pass sees it gone.
    pub fn vanished(&mut self, id: &SessionId) {
        self.watching.remove(id);
    }

    /// Step 5: the `state` tree writes since the last call.
    pub fn take_writes(&mut self) -> StateWrites {
        let mut puts = std::mem::take(&mut self.migrations);
        let mut dirty: Vec<SessionId> = self.dirty.drain().collect();
        dirty.sort();
        for id in dirty {
            if let Some(state) = self.sessions.get(&id) {
                puts.push((state_key(&id), state::encode(state)));
            }
        }
        StateWrites {
            puts,
            removes: std::mem::take(&mut self.removes),
        }
    }

    fn arm(&mut self, id: &SessionId, state: &SessionState) {
        if rules::wants_timer(state) {
            self.watching.insert(id.clone());
        } else {
            self.watching.remove(id);
        }
    }
}
