//! The transition tracker: turns what OpenCode writes into the moments OpenCode announces on its
//! bus (`session.idle`, `session.error`, `session.deleted`) and decides when each session is
//! exported.
//!
//! # Per tick (see [`Tracker::tick`])
//! 1. `session_heads`: one row per session with a change marker (`event_sequence.seq` on
//!    OpenCode ≥ 1.16). Sessions whose marker did not change are not read at all.
//! 2. For each changed session, `read_tail` (the newest messages and the parts of the newest
//!    assistant message) and [`crate::source::opencode::activity::classify`]: busy, or ended (with the
//!    terminal message's error, if any).
//! 3. A session known before and absent now was **deleted**: its last record is exported with
//!    `endReason: "deleted"` and `deletedAt`. OpenCode cascades every row away, so that record
//!    is kept in the tracker's persisted state (built when the session was first seen and at
//!    every end of turn).
//! 4. A session that ended is exported once it stayed ended for `export.debounce_ms`
//!    (transitions inside the window — the next step's message, a second `session.idle`, an
//!    archive — give one export), provided every todo is completed or cancelled (or there are
//!    none); with open todos it is exported after `export.final_after_secs` instead.
//! 5. A busy session with no write for `export.stale_after_secs` (OpenCode died mid-turn) is
//!    exported once with `incomplete: true`.
//!
//! A new end of turn (a different terminal message) exports again (latest version wins
//! downstream); so does archiving after the export. Writes after the end of a turn that do not
//! change it (title generation, `summary.diffs`, pruning) are not new activity.
//!
//! With `export.skip_subagent_sessions`, child sessions are not tracked on their own; their
//! parent's record summarises them.
//!
//! # Time
//! `now_ms` is passed in (wall clock in the daemon, a virtual clock in the replay test), so the
//! tracker itself reads no clock.
//!
//! # Persisted state
//! Each tracked session's [`SessionState`] is stored in the outbox's `state` tree under
//! `session/<id>` (JSON, versioned by `v`), written in the same sled transaction as the
//! records the tick enqueues. After a restart the tracker resumes from it: unchanged sessions
//! are not re-exported, changed ones are re-evaluated, and sessions deleted while the daemon
//! was down are exported as deleted.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::export::{self, ErrorInfo, ExportContext, Outcome, SessionExport};
use crate::source::opencode::activity::{self, Activity};
use crate::source::opencode::{ChangeMarker, OpenCodeDb, SourceError};

/// Key prefix of per-session state in the `state` tree.
pub const STATE_PREFIX: &[u8] = b"session/";

/// Timing and scope rules of the tracker (from `[export]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// `export.debounce_ms`.
    pub debounce_ms: i64,
    /// `export.final_after_secs`, in ms.
    pub final_after_ms: i64,
    /// `export.stale_after_secs`, in ms.
    pub stale_after_ms: i64,
    /// `export.skip_subagent_sessions`.
    pub skip_subagent_sessions: bool,
}

/// The persisted state of one tracked session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionState {
    /// Marker at the last look.
    pub marker: Marker,
    /// What the newest rows said at the last look.
    pub phase: Phase,
    /// What was exported last (to export each end of turn once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exported: Option<ExportKey>,
    /// The newest record built for the session (exported or not): the source of the
    /// `deleted` record once the rows are gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_record: Option<SessionExport>,
    /// When one of its subagent sessions last changed after the session was exported (ms):
    /// the record's `children` / `rollup` are re-exported one debounce window later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children_changed_at_ms: Option<i64>,
}

/// Serializable copy of [`ChangeMarker`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Marker {
    /// [`ChangeMarker::seq`].
    pub seq: i64,
    /// [`ChangeMarker::time_updated`] (ms).
    pub time_updated: i64,
    /// [`ChangeMarker::time_archived`] (ms).
    pub time_archived: Option<i64>,
}

impl From<ChangeMarker> for Marker {
    fn from(m: ChangeMarker) -> Marker {
        Marker {
            seq: m.seq,
            time_updated: m.time_updated,
            time_archived: m.time_archived,
        }
    }
}

/// What the newest rows of a session said at the last look.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "camelCase")]
pub enum Phase {
    /// No message yet.
    Empty,
    /// A turn in progress; `lastWriteMs` is the newest write seen.
    #[serde(rename_all = "camelCase")]
    Busy {
        /// Newest write seen in the session's tail (ms).
        last_write_ms: i64,
    },
    /// The last turn ended at `messageId`.
    #[serde(rename_all = "camelCase")]
    Ended {
        /// The terminal assistant message.
        message_id: String,
        /// Its error, if any.
        error: Option<ErrorInfo>,
        /// When the tracker first saw this end of turn (ms, tracker clock).
        seen_at_ms: i64,
        /// Whether todos were left open (pending / in progress) at the last look.
        todos_open: bool,
    },
}

/// Identifies an exported version: the end of turn and the archive time it carried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportKey {
    /// Terminal message id, or `stale:<lastWriteMs>` for an incomplete turn.
    pub ending: String,
    /// `archivedAt` of the exported record.
    pub archived_at: Option<i64>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "v")]
enum Stored {
    #[serde(rename = "1")]
    V1(SessionState),
}

/// The bus event a transition corresponds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Event {
    /// `session.idle`.
    #[serde(rename = "session.idle")]
    Idle,
    /// `session.error` (followed by idle).
    #[serde(rename = "session.error")]
    Error,
    /// `session.deleted`.
    #[serde(rename = "session.deleted")]
    Deleted,
    /// No OpenCode event: the turn never completed and the session went stale.
    #[serde(rename = "stale")]
    Stale,
}

/// One export decided by a tick.
#[derive(Debug, Clone)]
pub struct Emitted {
    /// The inferred event.
    pub event: Event,
    /// The record to enqueue.
    pub record: SessionExport,
    /// The record as JSON (what the outbox stores), serialized once here.
    pub json: Vec<u8>,
}

impl Emitted {
    fn new(event: Event, record: SessionExport) -> Emitted {
        let json = serde_json::to_vec(&record).expect("a record serializes");
        Emitted {
            event,
            record,
            json,
        }
    }
}

/// What one tick produced: records to enqueue and state to persist, committed together.
#[derive(Debug, Default)]
pub struct TickOutput {
    /// Exports, in the order decided.
    pub emitted: Vec<Emitted>,
    /// `state` tree puts (key, value).
    pub state_puts: Vec<(Vec<u8>, Vec<u8>)>,
    /// `state` tree removals.
    pub state_removes: Vec<Vec<u8>>,
    /// Session rows read this tick (all of them on a full scan).
    pub heads_read: usize,
    /// Sessions whose tail was read this tick.
    pub tails_read: usize,
    /// Sessions read in full this tick.
    pub snapshots_read: usize,
    /// Bytes the emitted records will take in the outbox (an upper bound, envelopes included).
    pub bytes: u64,
    /// Exports that were due but left for a later tick because the byte budget was spent.
    pub deferred: usize,
}

impl TickOutput {
    fn push(&mut self, e: Emitted) {
        // What the outbox will count for it (envelope included), against the byte budget.
        self.bytes += crate::queue::stored_size_bound(&e.record.session_id, e.json.len());
        self.emitted.push(e);
    }

    /// True when the tick has nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.emitted.is_empty() && self.state_puts.is_empty() && self.state_removes.is_empty()
    }
}

/// The in-memory tracker; see the module docs.
#[derive(Debug)]
pub struct Tracker {
    rules: Rules,
    sessions: HashMap<String, SessionState>,
    /// Sessions with a timer pending (ended not yet exported, or busy): checked every tick.
    watching: HashSet<String>,
    /// What the last scan saw of the whole database (all sessions, children included); `None`
    /// until the first scan, which reads every session row.
    index: Option<SeqIndex>,
    /// Markers of subagent sessions (with `skip_subagent_sessions`), to notice a child that
    /// changes after its parent was exported. Not persisted: the first scan after a start fills it.
    child_markers: HashMap<String, Marker>,
    /// Advanced once per session row during the next scan of every row (then dropped).
    progress: Option<indicatif::ProgressBar>,
}

/// The last scan's view of `event_sequence` and `session`.
#[derive(Debug, Default)]
struct SeqIndex {
    /// `event_sequence.seq` per session id.
    seqs: HashMap<String, i64>,
    /// Every session id (children included).
    known: HashSet<String>,
    /// `COUNT(*)` of `session`.
    total: i64,
}

/// The state key of a session.
pub fn state_key(session_id: &str) -> Vec<u8> {
    let mut k = STATE_PREFIX.to_vec();
    k.extend_from_slice(session_id.as_bytes());
    k
}

impl Tracker {
    /// A tracker with no known session.
    pub fn new(rules: Rules) -> Tracker {
        Tracker {
            rules,
            sessions: HashMap::new(),
            watching: HashSet::new(),
            index: None,
            child_markers: HashMap::new(),
            progress: None,
        }
    }

    /// Replaces the timing rules (a config reload); sessions already tracked keep their state
    /// and are judged by the new rules from the next tick on.
    pub fn set_rules(&mut self, rules: Rules) {
        self.rules = rules;
    }

    /// A progress bar advanced once per session during the next first scan (every session
    /// row is read); it is dropped after that scan.
    pub fn set_progress(&mut self, bar: indicatif::ProgressBar) {
        self.progress = Some(bar);
    }

    /// A tracker resumed from persisted `(key, value)` state entries (other keys are ignored;
    /// undecodable values are dropped with a warning, which only costs a re-export).
    pub fn resume(rules: Rules, entries: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Tracker {
        let mut t = Tracker::new(rules);
        for (k, v) in entries {
            let Some(id) = k.strip_prefix(STATE_PREFIX) else {
                continue;
            };
            let id = String::from_utf8_lossy(id).into_owned();
            match serde_json::from_slice::<Stored>(&v) {
                Ok(Stored::V1(state)) => {
                    if wants_timer(&state) {
                        t.watching.insert(id.clone());
                    }
                    t.sessions.insert(id, state);
                }
                Err(e) => {
                    tracing::warn!(session_id = %id, error = %e, "dropping undecodable tracker state")
                }
            }
        }
        t
    }

    /// Forgets what the last scan saw, so the next scan reads every session row: call it when
    /// the database was (re)opened, since the file may have been replaced.
    pub fn rescan(&mut self) {
        self.index = None;
    }

    /// Number of tracked sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// True when no session is tracked.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// The state of one session.
    pub fn state(&self, session_id: &str) -> Option<&SessionState> {
        self.sessions.get(session_id)
    }

    /// True when a timer is pending (a tick may export something even if the database did not
    /// change).
    pub fn has_timers(&self) -> bool {
        !self.watching.is_empty()
    }

    /// One pass. `scan` says whether the database changed since the last tick (otherwise only
    /// timers are checked and no row is read except for due exports). Exports stop once their
    /// JSON reaches `budget_bytes` (the outbox's free space): the sessions left stay due and go
    /// out in later ticks, so a backlog never overfills the outbox by more than one record.
    /// Deletions are always emitted (the tracker forgets a deleted session in the same tick).
    ///
    /// # Errors
    /// [`SourceError`] from the reader; the tracker is left as it was before the failing read
    /// for sessions not yet processed, so the next tick retries.
    pub fn tick(
        &mut self,
        db: &OpenCodeDb,
        ctx: &ExportContext,
        now_ms: i64,
        scan: bool,
        budget_bytes: u64,
    ) -> Result<TickOutput, SourceError> {
        let mut out = TickOutput::default();
        let mut dirty: HashSet<String> = HashSet::new();
        if scan {
            let first_scan = self.index.is_none();
            let (heads, gone) = self.changes(db, &mut out)?;
            let progress = if first_scan {
                self.progress.take()
            } else {
                None
            };
            if let Some(bar) = &progress {
                bar.set_length(heads.len() as u64);
            }
            for head in &heads {
                if let Some(bar) = &progress {
                    bar.inc(1);
                }
                if let (true, Some(parent)) = (self.rules.skip_subagent_sessions, &head.parent_id) {
                    let marker = Marker::from(head.marker);
                    let previous = self.child_markers.insert(head.id.clone(), marker);
                    let changed = previous.is_some_and(|m| m != marker)
                        || (previous.is_none() && !first_scan);
                    if changed {
                        if let Some(p) = self.sessions.get_mut(parent) {
                            if p.exported.is_some() {
                                p.children_changed_at_ms = Some(now_ms);
                                self.watching.insert(parent.clone());
                                dirty.insert(parent.clone());
                            }
                        }
                    }
                    continue;
                }
                let marker = Marker::from(head.marker);
                let is_new = !self.sessions.contains_key(&head.id);
                if !is_new && self.sessions[&head.id].marker == marker {
                    continue;
                }
                let Some(tail) = db.read_tail(&head.id)? else {
                    continue; // Deleted between the two reads: the next tick sees it gone.
                };
                out.tails_read += 1;
                let todos_open = tail
                    .todo_statuses
                    .iter()
                    .any(|s| s != "completed" && s != "cancelled");
                let last_write = tail.last_write_ms();
                let activity = activity::classify(&tail.recent, &tail.assistant_parts);
                let previous = self.sessions.get(&head.id);
                let new_phase = match activity {
                    Activity::Empty => Phase::Empty,
                    Activity::Busy => Phase::Busy {
                        last_write_ms: last_write,
                    },
                    Activity::Ended(e) => {
                        let seen_at_ms = match previous.map(|p| &p.phase) {
                            Some(Phase::Ended {
                                message_id,
                                seen_at_ms,
                                ..
                            }) if *message_id == e.message_id => *seen_at_ms,
                            // The window counts from the terminal message's completion (OpenCode's
                            // clock on this machine), so a turn that ended long ago — a backfill, or
                            // one that ended while the daemon was down — is due at once.
                            _ => e.completed_at.min(now_ms),
                        };
                        Phase::Ended {
                            message_id: e.message_id,
                            error: e.error,
                            seen_at_ms,
                            todos_open,
                        }
                    }
                };
                let entering_end = match (&new_phase, previous.map(|p| &p.phase)) {
                    (
                        Phase::Ended { message_id, .. },
                        Some(Phase::Ended {
                            message_id: old, ..
                        }),
                    ) => message_id != old,
                    (Phase::Ended { .. }, _) => true,
                    _ => false,
                };
                let mut state = previous.cloned().unwrap_or(SessionState {
                    marker,
                    phase: Phase::Empty,
                    exported: None,
                    last_record: None,
                    children_changed_at_ms: None,
                });
                state.marker = marker;
                state.phase = new_phase;
                let due = self.due(&state, now_ms);
                let within_budget = out.bytes < budget_bytes;
                out.deferred += usize::from(due.is_some() && !within_budget);
                if let Some((event, outcome, key)) = due.filter(|_| within_budget) {
                    // Due already (a turn that ended long ago): export with this one read.
                    if let Some(snapshot) = db.read_session(&head.id)? {
                        out.snapshots_read += 1;
                        let record = export::build(&snapshot, &outcome, ctx);
                        mark_exported(&mut state, key, &record);
                        out.push(Emitted::new(event, record));
                    }
                } else if is_new || entering_end {
                    // Keep a record to export if the session is deleted before its export.
                    if let Some(snapshot) = db.read_session(&head.id)? {
                        out.snapshots_read += 1;
                        let outcome = outcome_of(&state.phase);
                        state.last_record = Some(export::build(&snapshot, &outcome, ctx));
                    }
                }
                if wants_timer(&state) {
                    self.watching.insert(head.id.clone());
                } else {
                    self.watching.remove(&head.id);
                }
                self.sessions.insert(head.id.clone(), state);
                dirty.insert(head.id.clone());
            }
            for id in gone {
                self.child_markers.remove(&id);
                let Some(state) = self.sessions.remove(&id) else {
                    continue; // A child, or a session never tracked.
                };
                self.watching.remove(&id);
                dirty.remove(&id);
                out.state_removes.push(state_key(&id));
                if let Some(last) = &state.last_record {
                    out.push(Emitted::new(
                        Event::Deleted,
                        export::mark_deleted(last, now_ms),
                    ));
                }
            }
        }

        let watching: Vec<String> = self.watching.iter().cloned().collect();
        for id in watching {
            let Some(state) = self.sessions.get(&id) else {
                self.watching.remove(&id);
                continue;
            };
            let due = self.due(state, now_ms);
            let Some((event, outcome, key)) = due else {
                continue;
            };
            if out.bytes >= budget_bytes {
                out.deferred += 1;
                continue;
            }
            let Some(snapshot) = db.read_session(&id)? else {
                continue;
            };
            out.snapshots_read += 1;
            let record = export::build(&snapshot, &outcome, ctx);
            let state = self.sessions.get_mut(&id).expect("present");
            mark_exported(state, key, &record);
            out.push(Emitted::new(event, record));
            dirty.insert(id.clone());
            // Exported for this end of turn; the next change of the session re-arms the timer.
            self.watching.remove(&id);
        }

        for id in dirty {
            if let Some(state) = self.sessions.get(&id) {
                let bytes =
                    serde_json::to_vec(&Stored::V1(state.clone())).expect("state serializes");
                out.state_puts.push((state_key(&id), bytes));
            }
        }
        Ok(out)
    }

    /// What changed since the last scan: heads to look at and ids confirmed gone.
    ///
    /// With `event_sequence` (OpenCode ≥ 1.16) this reads only that table's small rows, the
    /// session rows of sessions whose `seq` moved (by primary key), and `COUNT(*)` of `session`:
    /// every write to a session bumps its `seq`, and deleting a session removes its row. A session
    /// without a sequence row (older than the last log wipe) can still be deleted unseen by the
    /// sequence table; the count catches that and triggers a full scan of `session`. Without the
    /// table, and on the first scan, every session row is read.
    fn changes(
        &mut self,
        db: &OpenCodeDb,
        out: &mut TickOutput,
    ) -> Result<(Vec<crate::source::opencode::SessionHead>, Vec<String>), SourceError> {
        if let (Some(index), Some(seqs)) = (self.index.as_mut(), db.sequences()?) {
            let seqs: HashMap<String, i64> = seqs.into_iter().collect();
            let mut heads = Vec::new();
            let mut new_ids = Vec::new();
            for (id, seq) in &seqs {
                if index.seqs.get(id) == Some(seq) {
                    continue;
                }
                if let Some(head) = db.session_head(id)? {
                    out.heads_read += 1;
                    if !index.known.contains(id) {
                        new_ids.push(id.clone());
                    }
                    heads.push(head);
                }
            }
            let mut gone = Vec::new();
            for id in index.seqs.keys().filter(|id| !seqs.contains_key(*id)) {
                out.heads_read += 1;
                if db.session_head(id)?.is_none() {
                    gone.push(id.clone());
                }
            }
            let total = db.session_count()?;
            let expected = index.total + new_ids.len() as i64
                - gone.iter().filter(|id| index.known.contains(*id)).count() as i64;
            if total == expected {
                index.seqs = seqs;
                index.total = total;
                index.known.extend(new_ids);
                for id in &gone {
                    index.known.remove(id);
                }
                return Ok((heads, gone));
            }
            // A session appeared or vanished without a sequence row: look at everything.
        }
        let heads = db.session_heads()?;
        out.heads_read += heads.len();
        let known: HashSet<String> = heads.iter().map(|h| h.id.clone()).collect();
        let gone = self
            .sessions
            .keys()
            .filter(|id| !known.contains(*id))
            .cloned()
            .collect();
        self.index = Some(SeqIndex {
            seqs: db.sequences()?.unwrap_or_default().into_iter().collect(),
            total: heads.len() as i64,
            known,
        });
        Ok((heads, gone))
    }

    /// Whether `state` is due for export at `now_ms`, and as what.
    fn due(&self, state: &SessionState, now_ms: i64) -> Option<(Event, Outcome, String)> {
        let archived = state.marker.time_archived;
        match &state.phase {
            Phase::Empty => None,
            Phase::Ended {
                message_id,
                error,
                seen_at_ms,
                todos_open,
            } => {
                let key = ExportKey {
                    ending: message_id.clone(),
                    archived_at: archived,
                };
                if state.exported.as_ref() == Some(&key) {
                    let since = state.children_changed_at_ms?;
                    if now_ms < since + self.rules.debounce_ms {
                        return None;
                    }
                    let event = if error.is_some() {
                        Event::Error
                    } else {
                        Event::Idle
                    };
                    return Some((event, Outcome::ended(error.clone()), message_id.clone()));
                }
                let same_turn = state
                    .exported
                    .as_ref()
                    .is_some_and(|k| k.ending == *message_id);
                let settled = now_ms >= seen_at_ms + self.rules.debounce_ms;
                let todo_rule =
                    !todos_open || same_turn || now_ms >= seen_at_ms + self.rules.final_after_ms;
                if !(settled && todo_rule) {
                    return None;
                }
                let event = if error.is_some() {
                    Event::Error
                } else {
                    Event::Idle
                };
                Some((event, Outcome::ended(error.clone()), message_id.clone()))
            }
            Phase::Busy { last_write_ms } => {
                let key = format!("stale:{last_write_ms}");
                if state.exported.as_ref().is_some_and(|k| k.ending == key) {
                    return None;
                }
                if now_ms < last_write_ms + self.rules.stale_after_ms {
                    return None;
                }
                Some((
                    Event::Stale,
                    Outcome {
                        end_reason: export::EndReason::Idle,
                        error: None,
                        incomplete: true,
                    },
                    key,
                ))
            }
        }
    }
}

/// Records that `record` was exported for the end of turn `ending`.
fn mark_exported(state: &mut SessionState, ending: String, record: &SessionExport) {
    state.exported = Some(ExportKey {
        ending,
        archived_at: record.archived_at,
    });
    state.children_changed_at_ms = None;
    state.last_record = Some(record.clone());
}

/// Whether a session has an export still to come on a timer (debounce, final, stale).
fn wants_timer(state: &SessionState) -> bool {
    let exported = state.exported.as_ref();
    match &state.phase {
        Phase::Empty => false,
        Phase::Ended { message_id, .. } => {
            state.children_changed_at_ms.is_some()
                || exported
                    != Some(&ExportKey {
                        ending: message_id.clone(),
                        archived_at: state.marker.time_archived,
                    })
        }
        Phase::Busy { last_write_ms } => {
            exported.is_none_or(|k| k.ending != format!("stale:{last_write_ms}"))
        }
    }
}

fn outcome_of(phase: &Phase) -> Outcome {
    match phase {
        Phase::Ended { error, .. } => Outcome::ended(error.clone()),
        Phase::Busy { .. } | Phase::Empty => Outcome {
            end_reason: export::EndReason::Idle,
            error: None,
            incomplete: true,
        },
    }
}
