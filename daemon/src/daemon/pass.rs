//! One pass over a source: the only place where the tracker, the source and the export meet.
//! `run` calls it every tick ([`Mode::Live`]) and `once` once ([`Mode::Flush`]), so both decide
//! endings by the same rules and persist the same state.
//!
//! 1. `source.changes()` — then the clock is read, so a deletion is never stamped before the
//!    read that saw it;
//! 2. the tracker's plan: each changed session is observed (a bounded read), then
//!    snapshotted when it is due or a record of it must be kept;
//! 3. sessions gone from the source are exported as deleted, from their stored record;
//! 4. every due session is snapshotted and exported, until `budget_bytes` of records (the
//!    outbox's free space) is spent — the rest stay due for a later pass;
//! 5. the records and the tracker's state come back in one [`PassOutput`], which the caller
//!    commits to the outbox in one transaction.
//!
//! # Chunks
//! A pass does a bounded amount of work: it observes at most [`PassOptions::chunk_sessions`]
//! sessions of the tracker's backlog and exports at most that many records, or
//! [`CHUNK_BYTES`] of them. When work is left it says so ([`PassOutput::more`]) and the caller
//! commits, then runs the next pass at once. So the first pass over a history of 50,000
//! sessions is about a hundred passes, each committed with its tracker state: memory does not
//! grow with the history (one big outbox transaction held every version of sled's nodes it
//! touched), and a kill mid-way loses or repeats at most the chunk being built, never a
//! committed one (a restart re-reads the source; sessions whose persisted marker matches are
//! not observed again, sessions whose ending is persisted but not exported are still due).
//!
//! A session whose data cannot be read ([`SourceError::BadRow`], which the source warns about
//! once) is skipped in steps 2 and 4, and the pass goes on with the others; any other source
//! error fails the whole pass (nothing is committed, the next tick reads again).
//!
//! Blocking IO: run it on a blocking thread.

use crate::export::{self, ExportContext, SessionExport};
use crate::source::{Activity, SessionId, SessionSnapshot, SessionSource, SourceError};
use crate::track::{self, rules, Mode, Need, Tracker, Trigger};

/// One record decided by a pass.
#[derive(Debug, Clone)]
pub struct Exported {
    /// Why.
    pub trigger: Trigger,
    /// The record.
    pub record: SessionExport,
    /// The record as JSON (what the outbox stores), serialized once here.
    pub json: Vec<u8>,
}

/// Why an observed session was not exported by a pass (for `once`'s notes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// It has no message yet.
    NoMessages,
    /// Its turn is still running (and not stale).
    TurnInProgress,
    /// Its newest message is a prompt sent less than
    /// [`crate::track::rules::NO_REPLY_AFTER_MS`] ago with no reply started.
    ReplyPending,
}

/// What one pass produced: records to enqueue and state to persist, committed together.
#[derive(Debug, Default)]
pub struct PassOutput {
    /// Exports, in the order decided.
    pub exported: Vec<Exported>,
    /// `state` tree puts (key, value): the tracker's state and changed last records.
    pub state_puts: Vec<(Vec<u8>, Vec<u8>)>,
    /// `state` tree removals.
    pub state_removes: Vec<Vec<u8>>,
    /// Session heads the source listed.
    pub heads_read: usize,
    /// Sessions observed (a bounded read each).
    pub observed: usize,
    /// Sessions read in full.
    pub snapshots_read: usize,
    /// Bytes the records will take in the outbox (an upper bound, envelopes included).
    pub bytes: u64,
    /// Exports that were due but left for a later pass because the byte budget was spent.
    pub deferred: usize,
    /// Sessions observed this pass that are not exported yet, and why.
    pub waiting: Vec<(SessionId, Waiting)>,
    /// The clock reading the pass used (ms).
    pub now_ms: i64,
    /// Deletions held by this pass instead of exported (see [`rules::hold_deletions`]): the
    /// sessions' last records moved to `held-deletion/<id>`.
    pub held: usize,
    /// Held deletions released by this pass: their sessions are back in the source.
    pub released: usize,
    /// Work is left that the chunk limits stopped (sessions to observe, due exports): the
    /// caller commits this output and runs the next pass right away.
    pub more: bool,
}

impl PassOutput {
    /// True when the pass has nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.exported.is_empty() && self.state_puts.is_empty() && self.state_removes.is_empty()
    }

    fn push(&mut self, trigger: Trigger, record: SessionExport, json: Vec<u8>) {
        self.bytes += crate::queue::stored_size_bound(&record.session_id, json.len());
        self.exported.push(Exported {
            trigger,
            record,
            json,
        });
    }
}

/// The records one pass exports, at most (bytes of JSON, envelopes included): the size of one
/// outbox transaction.
pub const CHUNK_BYTES: u64 = 1 << 20;

/// The sessions one pass observes, and the records it exports, at most (the default of
/// [`PassOptions::chunk_sessions`]).
pub const CHUNK_SESSIONS: usize = 200;

/// How a pass runs.
pub struct PassOptions<'a> {
    /// Observe at most this many sessions and export at most this many records (see the
    /// module docs, "Chunks"); [`CHUNK_SESSIONS`] in the daemon.
    pub chunk_sessions: usize,
    /// Live or flush (see [`Mode`]).
    pub mode: Mode,
    /// Stop exporting once the records reach this many bytes (deletions always go out).
    pub budget_bytes: u64,
    /// Reads a stored last record (`record/<id>` of the outbox's `state` tree).
    pub stored_record: &'a dyn Fn(&[u8]) -> Option<Vec<u8>>,
    /// Advanced once per session head on a pass that lists every session.
    pub progress: Option<&'a indicatif::ProgressBar>,
    /// Whether held deletions exist: then a session new to the tracker is looked up under
    /// `held-deletion/<id>` (through `stored_record`), and released when found.
    pub held_deletions: bool,
}

/// One pass; see the module docs.
///
/// # Errors
/// [`SourceError`] from the source. The tracker may then hold uncommitted changes: the caller
/// resumes it from the persisted state and calls [`SessionSource::rescan`].
pub fn pass(
    source: &mut dyn SessionSource,
    tracker: &mut Tracker,
    ctx: &ExportContext,
    clock: impl Fn() -> i64,
    options: PassOptions<'_>,
) -> Result<PassOutput, SourceError> {
    let changes = source.changes()?;
    let now = clock();
    let mut ctx = ctx.clone();
    ctx.exported_at = now;
    let mut out = PassOutput {
        now_ms: now,
        ..PassOutput::default()
    };
    let mode = options.mode;
    let tracked_before = tracker.len();
    let plan = tracker.changes(changes, now);
    let deleting = plan
        .gone
        .iter()
        .filter(|g| g.trigger == Some(Trigger::Deleted))
        .count();
    let hold = rules::hold_deletions(tracked_before, deleting);
    out.heads_read = plan.heads;
    let chunk = options.chunk_sessions.max(1);
    let observe = tracker.to_observe(chunk);
    let progress = options.progress.filter(|_| !observe.is_empty());
    if let Some(bar) = progress {
        // Across the chunks of one first pass: done so far + this chunk + the rest.
        bar.set_length(bar.position() + observe.len() as u64 + tracker.backlog() as u64);
    }

    for gone in plan.gone {
        if gone.trigger != Some(Trigger::Deleted) {
            continue;
        }
        let key = track::record_key(&gone.id);
        let stored = gone
            .unstored_record
            .or_else(|| (options.stored_record)(&key));
        if hold {
            if let Some(json) = stored {
                out.state_puts.push((track::held_key(&gone.id), json));
                out.held += 1;
            }
            continue;
        }
        let last = stored.and_then(|json| serde_json::from_slice::<SessionExport>(&json).ok());
        match last {
            Some(last) => {
                let record = export::mark_deleted(&last, now, ctx.privacy.on_delete);
                let json = serde_json::to_vec(&record).expect("a record serializes");
                out.push(Trigger::Deleted, record, json);
            }
            None => {
                tracing::warn!(session_id = %gone.id, "a deleted session's last record is missing or unreadable; its deletion is not exported")
            }
        }
    }

    for (id, marker) in observe {
        if let Some(bar) = progress {
            bar.inc(1);
        }
        if options.held_deletions && !tracker.tracks(&id) {
            let key = track::held_key(&id);
            if (options.stored_record)(&key).is_some() {
                out.state_removes.push(key);
                out.released += 1;
            }
        }
        let observation = match source.observe(&id) {
            Ok(o) => o,
            // One session's unreadable data never stops the others (the source warned).
            Err(e) if e.is_bad_row() => continue,
            Err(e) => return Err(e),
        };
        out.observed += usize::from(observation.is_some());
        let need = tracker.observed(&id, marker, observation.as_ref(), now, mode);
        match need {
            Need::Nothing => {}
            Need::Record(trigger) => {
                let Some(snapshot) = skip_bad_row(source.snapshot(&id, ctx.texts()))? else {
                    continue;
                };
                out.snapshots_read += 1;
                let mut record = export::build(&snapshot, trigger, &ctx);
                // Kept for a later deletion, which gets the next revision.
                record.revision = tracker.revision(&id);
                let json = serde_json::to_vec(&record).expect("a record serializes");
                if tracker.recorded(&id, track::state::record_digest(&json)) {
                    out.state_puts.push((track::record_key(&id), json));
                }
            }
            Need::Export(_) => {} // Exported below with every other due session.
        }
        if let (Some(o), Need::Nothing | Need::Record(_)) = (&observation, need) {
            match o.activity {
                Activity::Empty => out.waiting.push((id.clone(), Waiting::NoMessages)),
                Activity::Busy => out.waiting.push((id.clone(), Waiting::TurnInProgress)),
                Activity::AwaitingReply { .. } => {
                    out.waiting.push((id.clone(), Waiting::ReplyPending))
                }
                Activity::Ended(_) => {}
            }
        }
    }

    let mut exports = 0;
    for (id, trigger) in tracker.due(now, mode) {
        if out.bytes >= options.budget_bytes {
            out.deferred += 1;
            continue;
        }
        if exports >= chunk || out.bytes >= CHUNK_BYTES {
            out.more = true;
            break;
        }
        exports += 1;
        let snapshot = match source.snapshot(&id, ctx.texts()) {
            Ok(Some(s)) => s,
            Ok(None) => {
                tracker.vanished(&id);
                continue;
            }
            // Stays due: read again next pass (the source warned once).
            Err(e) if e.is_bad_row() => continue,
            Err(e) => return Err(e),
        };
        out.snapshots_read += 1;
        let mut record = export::build(&snapshot, trigger, &ctx);
        if !record.corrected.is_empty() {
            // One line per record exported; the fields, never their values.
            tracing::warn!(
                session_id = %id,
                fields = %record.corrected.join(","),
                "the source has values outside the deployment's content rules; the record is \
                 exported with them clamped or dropped and lists them in `corrected`"
            );
        }
        record.revision = tracker.next_revision(&id, now);
        let json = serde_json::to_vec(&record).expect("a record serializes");
        if tracker.exported(&id, now, mode, track::state::record_digest(&json)) {
            out.state_puts.push((track::record_key(&id), json.clone()));
        }
        out.push(trigger, record, json);
    }

    out.more |= tracker.backlog() > 0;
    let writes = tracker.take_writes();
    out.state_puts.extend(writes.puts);
    out.state_removes.extend(writes.removes);
    Ok(out)
}

/// A snapshot read, with a session whose data cannot be read turned into "skip it".
fn skip_bad_row(
    read: Result<Option<SessionSnapshot>, SourceError>,
) -> Result<Option<SessionSnapshot>, SourceError> {
    match read {
        Err(e) if e.is_bad_row() => Ok(None),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    //! The pass against a scripted in-memory source: what it asks the source, and when it reads
    //! the clock. (The real OpenCode source goes through the same pass in the integration
    //! tests; these pin the ordering rules, which a real database cannot time exactly.)

    use std::cell::Cell;
    use std::collections::VecDeque;
    use std::rc::Rc;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::export::ExportOptions;
    use crate::source::{
        ChangeMarker, Changes, Observation, SessionHead, SessionSnapshot, TurnEnd,
    };
    use crate::track::Rules;

    /// Answers `changes` from a script; when an answer is taken, the shared clock jumps to the
    /// time the script gives for it (as if the source's read took that long).
    struct Scripted {
        changes: VecDeque<(Changes, i64)>,
        clock: Arc<Mutex<i64>>,
        sessions: Vec<SessionSnapshot>,
        /// Sessions whose observe (`Some(true)`) or snapshot (`Some(false)`) is a bad row.
        bad: Vec<(SessionId, bool)>,
    }

    impl Scripted {
        fn bad_row(&self, id: &SessionId, observing: bool) -> Result<(), SourceError> {
            if self.bad.iter().any(|(b, o)| b == id && *o == observing) {
                return Err(SourceError::BadRow {
                    path: "/x".into(),
                    message: "invalid column type".into(),
                });
            }
            Ok(())
        }
    }

    impl SessionSource for Scripted {
        fn kind(&self) -> &'static str {
            "scripted source"
        }
        fn describe(&self) -> String {
            "scripted".into()
        }
        fn changes(&mut self) -> Result<Changes, SourceError> {
            let (c, at) = self.changes.pop_front().unwrap_or((Changes::None, 0));
            if at > 0 {
                *self.clock.lock().unwrap() = at;
            }
            Ok(c)
        }
        fn observe(&mut self, id: &SessionId) -> Result<Option<Observation>, SourceError> {
            self.bad_row(id, true)?;
            Ok(self
                .sessions
                .iter()
                .find(|s| &s.id == id)
                .map(|s| Observation {
                    activity: Activity::Ended(TurnEnd {
                        message_id: "msg_1".into(),
                        completed_at: s.last_write_ms,
                        error: None,
                    }),
                    last_write_ms: s.last_write_ms,
                    todos_open: false,
                }))
        }
        fn snapshot(
            &mut self,
            id: &SessionId,
            _texts: crate::source::Texts,
        ) -> Result<Option<SessionSnapshot>, SourceError> {
            self.bad_row(id, false)?;
            Ok(self.sessions.iter().find(|s| &s.id == id).cloned())
        }
        fn rescan(&mut self) {}
    }

    fn session(id: &str, at: i64) -> SessionSnapshot {
        SessionSnapshot {
            id: id.into(),
            parent_id: None,
            agent_version: "1.18.33".into(),
            project_id: "p".into(),
            directory: "/w".into(),
            worktree: None,
            title: "t".into(),
            created_at: at - 10,
            archived_at: None,
            last_write_ms: at,
            messages: Vec::new(),
            tool_calls: Vec::new(),
            code_changes: Default::default(),
            todos: Vec::new(),
            children: Vec::new(),
            fork: None,
            reverted: None,
        }
    }

    fn head(id: &str, counter: i64) -> SessionHead {
        SessionHead {
            id: id.into(),
            parent_id: None,
            marker: ChangeMarker {
                counter,
                updated_at: counter,
                archived_at: None,
            },
        }
    }

    /// Rules that export an ended turn at once.
    fn immediate_rules() -> Rules {
        Rules {
            debounce_ms: 0,
            final_after_ms: 0,
            stale_after_ms: i64::MAX / 4,
            skip_subagent_sessions: true,
            no_reply_after_ms: crate::track::rules::NO_REPLY_AFTER_MS,
        }
    }

    fn ctx() -> ExportContext {
        ExportContext {
            device_id: "d".into(),
            hostname: "h".into(),
            daemon_version: "v".into(),
            exported_at: 0,
            options: ExportOptions {
                include_todos: true,
                include_messages: false,
                max_message_chars: 100,
            },
            privacy: export::Privacy::of_level(
                export::privacy::Level::Content,
                export::PathKey::new([0; 32]),
            ),
        }
    }

    #[test]
    fn a_deletion_is_stamped_with_the_clock_read_after_the_read_that_saw_it() {
        let clock = Arc::new(Mutex::new(1_000));
        let mut source = Scripted {
            changes: VecDeque::from([
                (
                    Changes::Full {
                        heads: vec![head("ses_a", 1)],
                        fresh: true,
                    },
                    0,
                ),
                (
                    Changes::Delta {
                        heads: Vec::new(),
                        gone: vec!["ses_a".into()],
                    },
                    // The read that sees the deletion finishes at 50_000.
                    50_000,
                ),
            ]),
            clock: clock.clone(),
            sessions: vec![session("ses_a", 900)],
            bad: Vec::new(),
        };
        let mut tracker = Tracker::new(immediate_rules());
        let stored: Rc<Cell<Option<Vec<u8>>>> = Rc::default();
        let run = |source: &mut Scripted, tracker: &mut Tracker| {
            let lookup = |_: &[u8]| {
                let v = stored.take();
                stored.set(v.clone());
                v
            };
            let out = pass(
                source,
                tracker,
                &ctx(),
                || *clock.lock().unwrap(),
                PassOptions {
                    chunk_sessions: CHUNK_SESSIONS,
                    mode: Mode::Live,
                    budget_bytes: u64::MAX,
                    stored_record: &lookup,
                    progress: None,
                    held_deletions: false,
                },
            )
            .unwrap();
            for (k, v) in &out.state_puts {
                if k.starts_with(track::RECORD_PREFIX) {
                    stored.set(Some(v.clone()));
                }
            }
            out
        };

        let first = run(&mut source, &mut tracker);
        assert_eq!(
            first
                .exported
                .iter()
                .map(|e| (e.trigger, e.record.session_id.as_str()))
                .collect::<Vec<_>>(),
            [(Trigger::Idle, "ses_a")]
        );
        source.sessions.clear();
        let second = run(&mut source, &mut tracker);
        assert_eq!(second.exported.len(), 1, "{:?}", second.exported);
        let deleted = &second.exported[0];
        assert_eq!(deleted.trigger, Trigger::Deleted);
        assert_eq!(deleted.record.deleted_at, Some(50_000));
        assert_eq!(deleted.record.exported_at, 50_000);
        assert_eq!(second.now_ms, 50_000);
    }

    /// One session's data that cannot be read (at observe or at snapshot) never stops the pass:
    /// the other sessions are exported; the unreadable ones are not, and nothing fails.
    #[test]
    fn a_session_whose_rows_cannot_be_read_is_skipped_and_the_others_exported() {
        let clock = Arc::new(Mutex::new(1_000));
        let mut source = Scripted {
            changes: VecDeque::from([(
                Changes::Full {
                    heads: vec![head("ses_a", 1), head("ses_b", 1), head("ses_c", 1)],
                    fresh: true,
                },
                0,
            )]),
            clock: clock.clone(),
            sessions: vec![
                session("ses_a", 900),
                session("ses_b", 900),
                session("ses_c", 900),
            ],
            bad: vec![("ses_a".into(), true), ("ses_c".into(), false)],
        };
        let mut tracker = Tracker::new(immediate_rules());
        let out = pass(
            &mut source,
            &mut tracker,
            &ctx(),
            || *clock.lock().unwrap(),
            PassOptions {
                chunk_sessions: CHUNK_SESSIONS,
                mode: Mode::Live,
                budget_bytes: u64::MAX,
                stored_record: &|_: &[u8]| None,
                progress: None,
                held_deletions: false,
            },
        )
        .expect("one session's bad rows do not fail the pass");
        let exported: Vec<&str> = out
            .exported
            .iter()
            .map(|e| e.record.session_id.as_str())
            .collect();
        assert_eq!(exported, ["ses_b"]);
    }

    /// A long history is read a chunk at a time: each pass observes and exports at most
    /// `chunk_sessions`, says `more` while work is left, and every session is exported exactly
    /// once over the passes; a pass after a fresh tracker resumed from the committed state of
    /// the first chunks (a kill mid-way) exports exactly the sessions not committed yet.
    #[test]
    fn a_long_history_is_exported_in_chunks_each_session_once() {
        let ids: Vec<String> = (0..7).map(|i| format!("ses_{i}")).collect();
        let full = || Changes::Full {
            heads: ids.iter().map(|id| head(id, 1)).collect(),
            fresh: true,
        };
        let clock = Arc::new(Mutex::new(1_000));
        let mut source = Scripted {
            changes: VecDeque::from([(full(), 0)]),
            clock: clock.clone(),
            sessions: ids.iter().map(|id| session(id, 900)).collect(),
            bad: Vec::new(),
        };
        let run = |source: &mut Scripted, tracker: &mut Tracker| {
            pass(
                source,
                tracker,
                &ctx(),
                || *clock.lock().unwrap(),
                PassOptions {
                    chunk_sessions: 3,
                    mode: Mode::Flush,
                    budget_bytes: u64::MAX,
                    stored_record: &|_: &[u8]| None,
                    progress: None,
                    held_deletions: false,
                },
            )
            .unwrap()
        };
        let exported_ids = |out: &PassOutput| -> Vec<String> {
            out.exported
                .iter()
                .map(|e| e.record.session_id.clone())
                .collect()
        };

        // Chunks of 3 sessions: 3 + 3 + 1, in id order.
        let mut tracker = Tracker::new(immediate_rules());
        let mut committed: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let first = run(&mut source, &mut tracker);
        assert_eq!(exported_ids(&first), ["ses_0", "ses_1", "ses_2"]);
        assert_eq!(first.observed, 3);
        assert!(first.more);
        committed.extend(first.state_puts);
        let second = run(&mut source, &mut tracker);
        assert_eq!(exported_ids(&second), ["ses_3", "ses_4", "ses_5"]);
        assert!(second.more);
        let third = run(&mut source, &mut tracker);
        assert_eq!(exported_ids(&third), ["ses_6"]);
        assert!(!third.more, "nothing is left");
        assert!(run(&mut source, &mut tracker).is_empty());

        // Killed after the first chunk's commit: the restarted daemon resumes from it, reads
        // every session again (a full read), and exports only the 4 not committed.
        let mut resumed = Tracker::resume(immediate_rules(), committed);
        source.changes = VecDeque::from([(full(), 0)]);
        let mut again = Vec::new();
        loop {
            let out = run(&mut source, &mut resumed);
            again.extend(exported_ids(&out));
            if !out.more {
                break;
            }
        }
        assert_eq!(again, ["ses_3", "ses_4", "ses_5", "ses_6"]);
    }
}
