//! The tracker: turns what a source observes into the moments the agent announces (OpenCode's
//! `session.idle`, `session.error`, `session.deleted`) and decides when each session is
//! exported. It holds **no source handle and does no IO** of its own: it says what it needs
//! read, takes the answers, and decides; the pass that drives it ([`crate::daemon::pass`]) does
//! the reading. Its only reads are of its own committed state, through a [`StateStore`].
//!
//! # One pass
//! 1. [`Tracker::changes`] takes what the source says changed ([`Changes`]): the sessions of a
//!    delta whose marker moved (or that are new) join the tracker's backlog, and those gone are
//!    handed back in a [`Plan`]; a [`Changes::Rescan`] starts a **listing** (below). A
//!    subagent session (with `export.skip_subagent_sessions`) is not tracked on its own: its
//!    change marks its exported parent for a re-export one debounce window later
//!    ([`rules::child_changed`]).
//! 2. While a listing is on, [`Tracker::listed`] takes the next page of the source's sessions.
//! 3. [`Tracker::to_observe`] hands out a chunk of the backlog; for each, [`Tracker::observed`]
//!    takes the source's [`Observation`] (busy or ended) and says whether a full snapshot is
//!    needed now: to export it (already due: a turn that ended long ago) or to keep a record in
//!    case it is deleted before its export (a new session, or a new end of turn).
//! 4. [`Tracker::due`] lists the sessions whose timer has run out ([`rules::due`]).
//! 5. After building a record, [`Tracker::exported`] (or [`Tracker::recorded`]) notes it.
//! 6. [`Tracker::take_writes`] hands over the state to persist with the pass's records, in one
//!    outbox commit, which the caller makes before the next pass.
//!
//! The rules themselves are pure functions in [`rules`], tested by table; the persisted state
//! and its keys are in [`state`].
//!
//! # Memory
//! The tracker holds in memory only what it is working on: the sessions with a timer pending
//! (a turn in its debounce window, a turn still running, which may go stale), the sessions read
//! or changed during the current pass, the backlog (at most one delta or one listing page plus
//! a chunk) and a listing's position. Every other session's state stays in the `state` tree and
//! is read when it is needed. So memory depends on how many sessions are active, not on the
//! history: 50,000 settled sessions cost what 50 do.
//!
//! # Listings
//! A listing compares every session of the source with the stored states, a page at a time in
//! id order, merging the page with the stored `session/`, `child/` and `gone/` keys of the same
//! id range (each range read at most [`LIST_BUDGET`] keys at a time, so a range where many
//! sessions vanished is split over several pages). A listed session whose marker differs from
//! the stored one joins the backlog; a stored session not listed is **gone**, which is not
//! decided page by page: it is written under `gone/<id>`, and when the listing is complete the
//! deletions are exported — or all held, when they look like a replaced database
//! ([`rules::hold_deletions`] over the whole listing) — a chunk per pass. A listing interrupted
//! by a restart is started again by the next one, which finds the same sessions gone (and
//! removes the marks of those that came back).
//!
//! # Time
//! `now_ms` is passed in (the wall clock in the daemon, read after the source's change read so
//! a deletion is never stamped before it was seen; a virtual clock in the replay test).

pub mod rules;
pub mod state;
pub mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Serialize;

use crate::source::{ChangeMarker, Changes, HeadsPage, Observation, SessionHead, SessionId};
pub use rules::{Mode, Rules};
pub use state::{
    child_key, gone_key, held_key, record_key, state_key, Ending, ExportKey, Phase, SessionState,
    CHILD_PREFIX, GONE_PREFIX, HELD_PREFIX, RECORD_PREFIX, STATE_PREFIX,
};
pub use store::{StateStore, StoreError};

/// Keys of one prefix a listing page reads from the store at most (see "Listings").
pub const LIST_BUDGET: usize = 2048;

/// Keys read per page when resuming (the scan for sessions with a timer pending).
const RESUME_PAGE: usize = 1024;

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

/// What [`Tracker::changes`] and [`Tracker::drain_gone`] ask the pass to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Tracked sessions that are gone.
    pub gone: Vec<Gone>,
    /// Whether their deletions are held instead of exported ([`rules::hold_deletions`], over
    /// the delta or the whole listing they were found in).
    pub hold: bool,
    /// Session heads the source listed.
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

/// A listing in progress (see the module docs, "Listings").
#[derive(Debug)]
struct Listing {
    /// The last id compared (`None`: from the start).
    after: Option<SessionId>,
    /// The source restarted its cursor: no earlier look to compare children with.
    fresh: bool,
    /// Sessions tracked when the listing started.
    tracked_at_start: usize,
    /// Gone sessions found so far, and how many of them export a deletion.
    gone: usize,
    deleting: usize,
    /// How many sessions the source said it has (progress).
    sessions: Option<u64>,
}

/// The in-memory tracker; see the module docs.
#[derive(Debug)]
pub struct Tracker {
    rules: Rules,
    /// The states in memory: sessions with a timer pending, and those read or changed since
    /// the last [`Tracker::take_writes`]. Every other state is in the store.
    active: HashMap<SessionId, SessionState>,
    /// Sessions with a timer pending: checked by [`Tracker::due`]. Always in `active`.
    watching: HashSet<SessionId>,
    /// State to write at the next commit (changed sessions). Always in `active`.
    dirty: HashSet<SessionId>,
    /// Sessions forgotten since the last commit: the store still has them.
    removed: HashSet<SessionId>,
    /// State entries to remove at the next commit.
    removes: Vec<Vec<u8>>,
    /// Extra puts for the next commit: records of version-1 state being migrated, `gone/`
    /// marks.
    puts: Vec<(Vec<u8>, Vec<u8>)>,
    /// Children's markers that moved since the last commit (see [`CHILD_PREFIX`]).
    child_puts: BTreeMap<SessionId, ChangeMarker>,
    /// Changed sessions not observed yet, with their new marker, by id. Not persisted: after a
    /// restart the source's first look lists every session, and those whose persisted marker
    /// differs come back here.
    backlog: BTreeMap<SessionId, ChangeMarker>,
    listing: Option<Listing>,
    /// A complete listing found sessions gone: their deletions go out (or are held, `true`) a
    /// chunk per pass, from the pass after the last `gone/` mark was written.
    draining: Option<bool>,
    drain_ready: bool,
    /// `session/` entries (committed and pending).
    tracked: usize,
}

impl Tracker {
    /// A tracker with no known session.
    pub fn new(rules: Rules) -> Tracker {
        Tracker {
            rules,
            active: HashMap::new(),
            watching: HashSet::new(),
            dirty: HashSet::new(),
            removed: HashSet::new(),
            removes: Vec::new(),
            puts: Vec::new(),
            child_puts: BTreeMap::new(),
            backlog: BTreeMap::new(),
            listing: None,
            draining: None,
            drain_ready: false,
            tracked: 0,
        }
    }

    /// A tracker resumed from the committed state in `store`: one scan of the `session/` keys,
    /// a page at a time, keeping in memory only the sessions with a timer pending. Undecodable
    /// values are dropped with a warning, which only costs a re-export.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn resume(rules: Rules, store: &dyn StateStore) -> Result<Tracker, StoreError> {
        let mut t = Tracker::new(rules);
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = store.after(STATE_PREFIX, after.as_deref(), RESUME_PAGE)?;
            let full = page.len() == RESUME_PAGE;
            after = page.last().map(|(k, _)| k.clone());
            for (k, v) in page {
                t.tracked += 1;
                let Some(id) = state::key_session(&k, STATE_PREFIX) else {
                    continue;
                };
                match state::decode(&v) {
                    Ok(decoded) if rules::wants_timer(&decoded.state) => {
                        t.watching.insert(id.clone());
                        t.adopt(id, decoded);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(session_id = %id, error = %e, "dropping undecodable tracker state")
                    }
                }
            }
            if !full {
                break;
            }
        }
        Ok(t)
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

    /// Number of tracked sessions (stored or pending).
    pub fn len(&self) -> usize {
        self.tracked
    }

    /// True when no session is tracked.
    pub fn is_empty(&self) -> bool {
        self.tracked == 0
    }

    /// Sessions whose state is in memory now (see the module docs, "Memory").
    pub fn in_memory(&self) -> usize {
        self.active.len()
    }

    /// True when a timer is pending (a pass may export something though the source did not
    /// change).
    pub fn has_timers(&self) -> bool {
        !self.watching.is_empty()
    }

    /// True when nothing is left of the last changes (no backlog, listing or deletions to
    /// export): the pass may ask the source for new ones.
    pub fn idle(&self) -> bool {
        self.backlog.is_empty() && self.listing.is_none() && self.draining.is_none()
    }

    /// While a listing is on: where its next page starts (`Some(None)`: at the first id).
    pub fn listing_after(&self) -> Option<Option<SessionId>> {
        self.listing.as_ref().map(|l| l.after.clone())
    }

    /// While a listing is on: how many sessions the source said it has.
    pub fn listing_total(&self) -> Option<u64> {
        self.listing.as_ref().and_then(|l| l.sessions)
    }

    /// True when `id` has no state (stored or pending): a session new to the tracker.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn is_new(&mut self, id: &SessionId, store: &dyn StateStore) -> Result<bool, StoreError> {
        Ok(!self.load(id, store)?)
    }

    /// Step 1 of a pass: what to observe and what is gone, from the source's `changes`.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn changes(
        &mut self,
        changes: Changes,
        now_ms: i64,
        store: &dyn StateStore,
    ) -> Result<Plan, StoreError> {
        match changes {
            Changes::None => Ok(Plan::default()),
            Changes::Rescan { fresh, sessions } => {
                self.listing = Some(Listing {
                    after: None,
                    fresh,
                    tracked_at_start: self.tracked,
                    gone: 0,
                    deleting: 0,
                    sessions,
                });
                Ok(Plan::default())
            }
            Changes::Delta { heads, gone } => {
                let tracked_before = self.tracked;
                let mut plan = Plan {
                    heads: heads.len(),
                    ..Plan::default()
                };
                for head in heads {
                    let previous = self.stored_child(&head, store)?;
                    if !self.child_head(&head, previous, false, now_ms, store)? {
                        let stored = self.stored_marker(&head.id, store)?;
                        self.session_head(head, stored);
                    }
                }
                let mut deleting = 0;
                for id in gone {
                    self.child_puts.remove(&id);
                    self.removes.push(child_key(&id));
                    if let Some(g) = self.forget(&id, store)? {
                        deleting += usize::from(g.trigger == Some(Trigger::Deleted));
                        plan.gone.push(g);
                    }
                }
                plan.hold = rules::hold_deletions(tracked_before, deleting);
                Ok(plan)
            }
        }
    }

    /// Step 2, while a listing is on ([`Tracker::listing_after`]): the source's next page,
    /// compared with the stored states of the same id range (see the module docs,
    /// "Listings"). Returns how many heads were compared.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn listed(
        &mut self,
        page: HeadsPage,
        now_ms: i64,
        store: &dyn StateStore,
    ) -> Result<usize, StoreError> {
        let Some(listing) = self.listing.as_ref() else {
            return Ok(0);
        };
        let (after, fresh) = (listing.after.clone(), listing.fresh);
        // The page covers (after, its last id], or everything after `after` when it ends the
        // listing; a stored range too long to read at once shortens it.
        let mut end = match (page.end, page.heads.last()) {
            (false, Some(last)) => Some(last.id.clone()),
            _ => None,
        };
        let mut ranges = Vec::new();
        for prefix in [STATE_PREFIX, CHILD_PREFIX, GONE_PREFIX] {
            let StoredRange { entries, cut } =
                stored_range(store, prefix, after.as_ref(), end.as_ref())?;
            if let Some(cut) = cut {
                end = Some(match end {
                    Some(e) if e < cut => e,
                    _ => cut,
                });
            }
            ranges.push(entries);
        }
        let within = |id: &SessionId| end.as_ref().is_none_or(|e| id <= e);
        let mut gone_marks: BTreeSet<SessionId> = ranges
            .pop()
            .unwrap_or_default()
            .into_iter()
            .filter(|(id, _)| within(id))
            .map(|(id, _)| id)
            .collect();
        let mut children: BTreeMap<SessionId, Vec<u8>> = ranges
            .pop()
            .unwrap_or_default()
            .into_iter()
            .filter(|(id, _)| within(id))
            .collect();
        let mut states: BTreeMap<SessionId, Vec<u8>> = ranges
            .pop()
            .unwrap_or_default()
            .into_iter()
            .filter(|(id, _)| within(id))
            .collect();

        let mut compared = 0;
        for head in page.heads.into_iter().filter(|h| within(&h.id)) {
            compared += 1;
            if gone_marks.remove(&head.id) {
                // Back in the source since a listing found it gone.
                self.removes.push(gone_key(&head.id));
            }
            let stored_state = states.remove(&head.id);
            let previous = match self.child_puts.get(&head.id) {
                Some(m) => Some(*m),
                None => children.remove(&head.id).and_then(|v| decode_marker(&v)),
            };
            children.remove(&head.id);
            if self.child_head(&head, previous, fresh, now_ms, store)? {
                continue;
            }
            let stored = match self.active.get(&head.id) {
                Some(s) => Some(s.marker),
                None if self.removed.contains(&head.id) => None,
                None => stored_state
                    .and_then(|v| state::decode(&v).ok())
                    .map(|d| d.state.marker),
            };
            self.session_head(head, stored);
        }
        // Stored and not listed: gone (decided when the listing is complete).
        let listing = self.listing.as_mut().expect("checked above");
        for (id, value) in states {
            if self.removed.contains(&id) || gone_marks.contains(&id) {
                continue;
            }
            let deletes = match self.active.get(&id) {
                Some(s) => rules::on_gone(s).is_some(),
                None => state::decode(&value)
                    .map(|d| rules::on_gone(&d.state).is_some())
                    .unwrap_or(false),
            };
            listing.gone += 1;
            listing.deleting += usize::from(deletes);
            self.puts.push((gone_key(&id), Vec::new()));
        }
        listing.gone += gone_marks.len();
        for id in children.into_keys() {
            // A subagent session gone: nothing of its own to export.
            self.child_puts.remove(&id);
            self.removes.push(child_key(&id));
        }
        match end {
            Some(e) => listing.after = Some(e),
            None => {
                let done = self.listing.take().expect("checked above");
                if done.gone > 0 {
                    self.draining =
                        Some(rules::hold_deletions(done.tracked_at_start, done.deleting));
                    self.drain_ready = false;
                }
            }
        }
        Ok(compared)
    }

    /// After a complete listing found sessions gone: up to `n` of them, forgotten now, with
    /// whether their deletions are held. Empty until the marks are committed.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn drain_gone(&mut self, n: usize, store: &dyn StateStore) -> Result<Plan, StoreError> {
        let (Some(hold), true) = (self.draining, self.drain_ready) else {
            return Ok(Plan::default());
        };
        let n = n.max(1);
        let marks = store.after(GONE_PREFIX, None, n)?;
        if marks.len() < n {
            self.draining = None;
        }
        let mut plan = Plan {
            hold,
            ..Plan::default()
        };
        for (key, _) in marks {
            let id = state::key_session(&key, GONE_PREFIX);
            self.removes.push(key);
            if let Some(id) = id {
                if let Some(g) = self.forget(&id, store)? {
                    plan.gone.push(g);
                }
            }
        }
        Ok(plan)
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

    /// Step 3: the source's observation of `id` (`None`: gone since the change read; the next
    /// pass sees it gone). Says whether a snapshot is needed.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn observed(
        &mut self,
        id: &SessionId,
        marker: ChangeMarker,
        observation: Option<&Observation>,
        now_ms: i64,
        mode: Mode,
        store: &dyn StateStore,
    ) -> Result<Need, StoreError> {
        let Some(observation) = observation else {
            return Ok(Need::Nothing);
        };
        if self.removed.contains(id) {
            // Forgotten earlier in this pass (a deletion that came back at once): observed
            // again once that is committed.
            self.backlog.insert(id.clone(), marker);
            return Ok(Need::Nothing);
        }
        let known = self.load(id, store)?;
        let previous = self.active.get(id);
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
        if !known {
            self.tracked += 1;
        }
        self.arm(id, &state);
        self.active.insert(id.clone(), state);
        self.dirty.insert(id.clone());
        Ok(need)
    }

    /// Step 4: the sessions due now, oldest id first, each with its trigger.
    pub fn due(&self, now_ms: i64, mode: Mode) -> Vec<(SessionId, Trigger)> {
        let mut due: Vec<(SessionId, Trigger)> = self
            .watching
            .iter()
            .filter_map(|id| {
                let state = self.active.get(id)?;
                let (trigger, _) = rules::due(state, now_ms, &self.rules, mode)?;
                Some((id.clone(), trigger))
            })
            .collect();
        due.sort_by(|a, b| a.0.cmp(&b.0));
        due
    }

    /// Step 5: `id` was exported at `now_ms` with a record whose digest is `digest`
    /// ([`state::record_digest`]). Returns true when that record differs from the stored one
    /// (the pass then writes it under [`record_key`]). `id` is one [`Tracker::due`] listed.
    pub fn exported(&mut self, id: &SessionId, now_ms: i64, mode: Mode, digest: String) -> bool {
        let Some(state) = self.active.get_mut(id) else {
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
    /// 0 for a session not in memory (not observed or due in this pass).
    pub fn next_revision(&mut self, id: &SessionId, now_ms: i64) -> i64 {
        let Some(state) = self.active.get_mut(id) else {
            return 0;
        };
        state.revision = state.revision.saturating_add(1).max(now_ms);
        self.dirty.insert(id.clone());
        state.revision
    }

    /// The revision of the last record of `id` exported (0: none yet, or not in memory).
    pub fn revision(&self, id: &SessionId) -> i64 {
        self.active.get(id).map_or(0, |s| s.revision)
    }

    /// A record of `id` was built (not exported) with `digest`; true when it differs from the
    /// stored one.
    pub fn recorded(&mut self, id: &SessionId, digest: String) -> bool {
        let Some(state) = self.active.get_mut(id) else {
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

    /// Step 6: the `state` tree writes since the last call. The caller commits them before the
    /// next pass (or, when that fails, resumes a tracker from the store): the states not
    /// watched leave memory here.
    pub fn take_writes(&mut self) -> StateWrites {
        let mut puts = std::mem::take(&mut self.puts);
        let mut dirty: Vec<SessionId> = self.dirty.drain().collect();
        dirty.sort();
        for id in dirty {
            if let Some(state) = self.active.get(&id) {
                puts.push((state_key(&id), state::encode(state)));
            }
        }
        for (id, marker) in std::mem::take(&mut self.child_puts) {
            puts.push((
                child_key(&id),
                serde_json::to_vec(&marker).expect("a marker serializes"),
            ));
        }
        let watching = &self.watching;
        self.active.retain(|id, _| watching.contains(id));
        self.removed.clear();
        self.drain_ready = self.draining.is_some();
        StateWrites {
            puts,
            removes: std::mem::take(&mut self.removes),
        }
    }

    /// Makes `id`'s state available in `active`: true when it has one (pending or stored).
    fn load(&mut self, id: &SessionId, store: &dyn StateStore) -> Result<bool, StoreError> {
        if self.active.contains_key(id) {
            return Ok(true);
        }
        if self.removed.contains(id) {
            return Ok(false);
        }
        let Some(value) = store.get(&state_key(id))? else {
            return Ok(false);
        };
        match state::decode(&value) {
            Ok(decoded) => {
                self.adopt(id.clone(), decoded);
                Ok(true)
            }
            Err(e) => {
                tracing::warn!(session_id = %id, error = %e, "dropping undecodable tracker state");
                Ok(false)
            }
        }
    }

    /// Takes a decoded state into memory (and a version-1 record into the next commit).
    fn adopt(&mut self, id: SessionId, decoded: state::Decoded) {
        if let Some(record) = decoded.legacy_record {
            self.puts.push((record_key(&id), record));
            self.dirty.insert(id.clone());
        }
        self.active.insert(id, decoded.state);
    }

    /// The stored marker of a tracked session (loading it).
    fn stored_marker(
        &mut self,
        id: &SessionId,
        store: &dyn StateStore,
    ) -> Result<Option<ChangeMarker>, StoreError> {
        Ok(if self.load(id, store)? {
            self.active.get(id).map(|s| s.marker)
        } else {
            None
        })
    }

    /// The last marker seen of a subagent session `head` (when the tracker keeps children's
    /// markers: `skip_subagent_sessions`).
    fn stored_child(
        &self,
        head: &SessionHead,
        store: &dyn StateStore,
    ) -> Result<Option<ChangeMarker>, StoreError> {
        if !(self.rules.skip_subagent_sessions && head.parent_id.is_some()) {
            return Ok(None);
        }
        if let Some(m) = self.child_puts.get(&head.id) {
            return Ok(Some(*m));
        }
        Ok(store
            .get(&child_key(&head.id))?
            .and_then(|v| decode_marker(&v)))
    }

    /// A subagent session's head (with `skip_subagent_sessions`): marks its exported parent
    /// when it changed. False when `head` is not such a session.
    fn child_head(
        &mut self,
        head: &SessionHead,
        previous: Option<ChangeMarker>,
        fresh: bool,
        now_ms: i64,
        store: &dyn StateStore,
    ) -> Result<bool, StoreError> {
        let (true, Some(parent)) = (self.rules.skip_subagent_sessions, &head.parent_id) else {
            return Ok(false);
        };
        if previous != Some(head.marker) {
            self.child_puts.insert(head.id.clone(), head.marker);
        }
        if rules::child_changed(previous, head.marker, fresh) && self.load(parent, store)? {
            if let Some(p) = self.active.get_mut(parent) {
                if p.exported.is_some() {
                    p.children_changed_at_ms = Some(now_ms);
                    self.watching.insert(parent.clone());
                    self.dirty.insert(parent.clone());
                }
            }
        }
        Ok(true)
    }

    /// A session's head: into the backlog when its marker moved from `stored`.
    fn session_head(&mut self, head: SessionHead, stored: Option<ChangeMarker>) {
        if stored != Some(head.marker) {
            self.backlog.insert(head.id, head.marker);
        }
    }

    /// Forgets a tracked session that is gone: its state and record go at the next commit.
    fn forget(
        &mut self,
        id: &SessionId,
        store: &dyn StateStore,
    ) -> Result<Option<Gone>, StoreError> {
        self.backlog.remove(id);
        if !self.load(id, store)? {
            return Ok(None); // A child, or a session never tracked.
        }
        let state = self.active.remove(id).expect("loaded above");
        self.watching.remove(id);
        self.dirty.remove(id);
        self.removed.insert(id.clone());
        self.tracked = self.tracked.saturating_sub(1);
        self.removes.push(state_key(id));
        let key = record_key(id);
        let unstored_record = self
            .puts
            .iter()
            .position(|(k, _)| *k == key)
            .map(|i| self.puts.swap_remove(i).1);
        self.removes.push(key);
        Ok(Some(Gone {
            trigger: rules::on_gone(&state),
            id: id.clone(),
            unstored_record,
        }))
    }

    fn arm(&mut self, id: &SessionId, state: &SessionState) {
        if rules::wants_timer(state) {
            self.watching.insert(id.clone());
        } else {
            self.watching.remove(id);
        }
    }
}

/// A stored child marker.
fn decode_marker(value: &[u8]) -> Option<ChangeMarker> {
    serde_json::from_slice(value).ok()
}

/// What [`stored_range`] read.
struct StoredRange {
    /// `(session, value)` in id order.
    entries: Vec<(SessionId, Vec<u8>)>,
    /// Where it stopped short of the range's end (`None`: it did not).
    cut: Option<SessionId>,
}

/// The stored entries of `prefix` for the ids in `(after, end]` (to the last with `end` =
/// `None`), at most [`LIST_BUDGET`] of them: when there are more, the range stops at the last
/// one read, which is returned as the cut.
fn stored_range(
    store: &dyn StateStore,
    prefix: &[u8],
    after: Option<&SessionId>,
    end: Option<&SessionId>,
) -> Result<StoredRange, StoreError> {
    let from = after.map(|a| [prefix, a.as_str().as_bytes()].concat());
    let entries = store.after(prefix, from.as_deref(), LIST_BUDGET + 1)?;
    let more = entries.len() > LIST_BUDGET;
    let mut out = Vec::with_capacity(entries.len().min(LIST_BUDGET));
    for (k, v) in entries.into_iter().take(LIST_BUDGET) {
        let Some(id) = state::key_session(&k, prefix) else {
            continue;
        };
        if end.is_some_and(|e| &id > e) {
            return Ok(StoredRange {
                entries: out,
                cut: None,
            });
        }
        out.push((id, v));
    }
    let cut = if more {
        out.last().map(|(id, _)| id.clone())
    } else {
        None
    };
    Ok(StoredRange { entries: out, cut })
}
