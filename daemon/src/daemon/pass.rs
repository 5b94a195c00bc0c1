//! One pass over a source: the only place where the tracker, the source and the export meet.
//! `run` calls it every tick ([`Mode::Live`]) and `once` once ([`Mode::Flush`]), so both decide
//! endings by the same rules and persist the same state.
//!
//! 1. `source.changes()`, when the tracker has nothing left of the last ones — then the clock is
//!    read, so a deletion is never stamped before the read that saw it;
//! 2. while a listing is on ([`crate::track`], "Listings"), the next pages of the source's
//!    sessions, until the backlog holds a chunk;
//! 3. sessions gone from the source are exported as deleted, from their stored record (or held);
//! 4. the tracker's backlog: each changed session is observed (a bounded read), then
//!    snapshotted when it is due or a record of it must be kept;
//! 5. every due session is snapshotted and exported, until `budget_bytes` of records (the
//!    outbox's free space) is spent — the rest stay due for a later pass;
//! 6. the records and the tracker's state come back in one [`PassOutput`], which the caller
//!    commits to the outbox in one transaction before the next pass.
//!
//! # Chunks
//! A pass does a bounded amount of work: it lists at most [`MAX_PAGES`] pages of
//! [`LIST_PAGE`] sessions, observes at most [`PassOptions::chunk_sessions`] sessions of the
//! tracker's backlog (fewer while exports are due: a chunk minus those, so sessions waiting to
//! be exported never pile up) and exports at most that many records, or [`CHUNK_BYTES`] of
//! them. When work is left it says so ([`PassOutput::more`]) and the caller commits, then runs
//! the next pass at once. So the first pass over a history of 50,000 sessions is a few hundred
//! passes, each committed with its tracker state: memory does not grow with the history (one
//! big outbox transaction held every version of sled's nodes it touched, and the tracker keeps
//! only active sessions in memory), and a kill mid-way loses or repeats at most the chunk being
//! built, never a committed one (a restart lists the source again; sessions whose persisted
//! marker matches are not observed again, sessions whose ending is persisted but not exported
//! are still due).
//!
//! A session whose data cannot be read ([`SourceError::BadRow`], which the source warns about
//! once) is skipped in steps 2 and 4, and the pass goes on with the others; any other source
//! error fails the whole pass (nothing is committed, the next tick reads again).
//!
//! Blocking IO: run it on a blocking thread.

use crate::export::{self, ExportContext, SessionExport};
use crate::queue::Outbox;
use crate::source::{Activity, SessionId, SessionSnapshot, SessionSource, SourceError};
use crate::track::{self, Mode, Need, StateStore, StoreError, Tracker, Trigger};

/// Why a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// Reading the source failed (see [`SourceError`] for what the caller does).
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Reading the tracker's committed state failed: fatal (the outbox's storage errors are
    /// sticky).
    #[error(transparent)]
    State(#[from] StoreError),
}

/// The outbox's `state` tree is the tracker's store.
impl StateStore for Outbox {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.state_get(key).map_err(|e| StoreError(e.to_string()))
    }

    fn after(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<track::store::Entry>, StoreError> {
        self.state_after(prefix, after, limit)
            .map_err(|e| StoreError(e.to_string()))
    }
}

/// Sessions one listing page asks the source for.
pub const LIST_PAGE: usize = 1000;

/// Listing pages one pass reads at most.
pub const MAX_PAGES: usize = 20;

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
    /// Deletions held by this pass instead of exported (see [`crate::track::rules::hold_deletions`]): the
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
    /// The committed state (the outbox's `state` tree): the tracker's states and the stored
    /// last records (`record/<id>`).
    pub store: &'a dyn StateStore,
    /// Advanced once per session head a listing compares.
    pub progress: Option<&'a indicatif::ProgressBar>,
    /// Whether held deletions exist: then a session new to the tracker is looked up under
    /// `held-deletion/<id>` (in `store`), and released when found.
    pub held_deletions: bool,
}

/// One pass; see the module docs.
///
/// # Errors
/// [`PassError`]. The tracker may then hold uncommitted changes: the caller resumes it from
/// the persisted state and calls [`SessionSource::rescan`].
pub fn pass(
    source: &mut dyn SessionSource,
    tracker: &mut Tracker,
    ctx: &ExportContext,
    clock: impl Fn() -> i64,
    options: PassOptions<'_>,
) -> Result<PassOutput, PassError> {
    let store = options.store;
    let mut plan = track::Plan::default();
    let was_listing = tracker.listing_after().is_some();
    let now = if tracker.idle() {
        let changes = source.changes()?;
        let now = clock();
        plan = tracker.changes(changes, now, store)?;
        now
    } else {
        clock()
    };
    let mut ctx = ctx.clone();
    ctx.exported_at = now;
    let mut out = PassOutput {
        now_ms: now,
        heads_read: plan.heads,
        ..PassOutput::default()
    };
    let mode = options.mode;
    let chunk = options.chunk_sessions.max(1);
    let progress = options.progress;
    if let (Some(bar), Some(total), false) = (progress, tracker.listing_total(), was_listing) {
        // A listing starts: the bar counts the sessions it compares.
        bar.set_length(bar.position() + total);
    }
    let mut pages = 0;
    while let Some(after) = tracker.listing_after() {
        if tracker.backlog() >= chunk || pages == MAX_PAGES {
            break;
        }
        pages += 1;
        let page = source.heads_after(after.as_ref(), LIST_PAGE)?;
        let compared = tracker.listed(page, now, store)?;
        out.heads_read += compared;
        if let Some(bar) = progress {
            bar.inc(compared as u64);
        }
    }
    if plan.gone.is_empty() {
        plan = tracker.drain_gone(chunk, store)?;
    }
    let hold = plan.hold;

    for gone in plan.gone {
        if gone.trigger != Some(Trigger::Deleted) {
            continue;
        }
        let key = track::record_key(&gone.id);
        let stored = match gone.unstored_record {
            Some(json) => Some(json),
            None => stored_last_record(store, &key, &gone.id),
        };
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

    // Sessions waiting to be exported count against the chunk, so they never pile up in
    // memory (a quarter of it is always observed, so sessions stuck due cannot stop the rest).
    let due_now = tracker.due(now, mode).len();
    let observe_n = chunk.saturating_sub(due_now).max(chunk / 4);
    let observe = tracker.to_observe(observe_n);
    let texts = ctx.texts();
    let mut exports = 0;
    for (id, marker) in observe {
        let new = tracker.is_new(&id, store)?;
        if options.held_deletions && new {
            let key = track::held_key(&id);
            if store.get(&key)?.is_some() {
                out.state_removes.push(key);
                out.released += 1;
            }
        }
        // A session new to the tracker is read whole anyway (its record is kept, or it is
        // exported): one read gives both the observation and the snapshot.
        let read = if new {
            source
                .observe_whole(&id, texts)
                .map(|r| r.map(|(o, s)| (o, Some(s))))
        } else {
            source.observe(&id).map(|r| r.map(|o| (o, None)))
        };
        let (observation, mut whole) = match read {
            Ok(Some((o, s))) => (Some(o), s),
            Ok(None) => (None, None),
            // One session's unreadable data never stops the others (the source warned).
            Err(e) if e.is_bad_row() => continue,
            Err(e) => return Err(e.into()),
        };
        out.observed += usize::from(observation.is_some());
        out.snapshots_read += usize::from(whole.is_some());
        let need = tracker.observed(&id, marker, observation.as_ref(), now, mode, store)?;
        match need {
            Need::Nothing => {}
            Need::Record(trigger) => {
                let snapshot = match whole.take() {
                    Some(s) => s,
                    None => {
                        let Some(s) = skip_bad_row(source.snapshot(&id, texts))? else {
                            continue;
                        };
                        out.snapshots_read += 1;
                        s
                    }
                };
                let mut record = export::build(&snapshot, trigger, &ctx);
                // Kept for a later deletion, which gets the next revision.
                record.revision = tracker.revision(&id);
                let json = serde_json::to_vec(&record).expect("a record serializes");
                if tracker.recorded(
                    &id,
                    track::state::record_digest_of(&record.content_hash, record.revision),
                ) {
                    out.state_puts.push((track::record_key(&id), json));
                }
            }
            Need::Export(trigger) => {
                // Exported now when it was read whole and the chunk has room; otherwise below
                // with every other due session (or by a later pass).
                if let Some(snapshot) = whole.take() {
                    if exports < chunk
                        && out.bytes < CHUNK_BYTES
                        && out.bytes < options.budget_bytes
                    {
                        exports += 1;
                        export_one(&mut out, tracker, &ctx, &id, trigger, &snapshot, mode);
                    }
                }
            }
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
        let snapshot = match source.snapshot(&id, texts) {
            Ok(Some(s)) => s,
            Ok(None) => {
                tracker.vanished(&id);
                continue;
            }
            // Stays due: read again next pass (the source warned once).
            Err(e) if e.is_bad_row() => continue,
            Err(e) => return Err(e.into()),
        };
        out.snapshots_read += 1;
        export_one(&mut out, tracker, &ctx, &id, trigger, &snapshot, mode);
    }

    out.more |= !tracker.idle();
    let writes = tracker.take_writes();
    out.state_puts.extend(writes.puts);
    out.state_removes.extend(writes.removes);
    Ok(out)
}

/// Builds and exports a due session's record from its snapshot (at `ctx.exported_at`).
fn export_one(
    out: &mut PassOutput,
    tracker: &mut Tracker,
    ctx: &ExportContext,
    id: &SessionId,
    trigger: Trigger,
    snapshot: &SessionSnapshot,
    mode: Mode,
) {
    let now = ctx.exported_at;
    let mut record = export::build(snapshot, trigger, ctx);
    if !record.corrected.is_empty() {
        // One line per record exported; the fields, never their values.
        tracing::warn!(
            session_id = %id,
            fields = %record.corrected.join(","),
            "the source has values outside the deployment's content rules; the record is \
             exported with them clamped or dropped and lists them in `corrected`"
        );
    }
    record.revision = tracker.next_revision(id, now);
    let json = serde_json::to_vec(&record).expect("a record serializes");
    let digest = track::state::record_digest_of(&record.content_hash, record.revision);
    if tracker.exported(id, now, mode, digest) {
        out.state_puts.push((track::record_key(id), json.clone()));
    }
    out.push(trigger, record, json);
}

/// A deleted session's stored last record. The outbox does not read these at open
/// ([`crate::queue::LAZY_STATE_PREFIX`]), so a damaged one shows here first: its read failing
/// (an error, or a panic in sled) costs that one deletion, with a warning, and nothing else.
fn stored_last_record(store: &dyn StateStore, key: &[u8], id: &SessionId) -> Option<Vec<u8>> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.get(key))) {
        Ok(Ok(record)) => record,
        Ok(Err(e)) => {
            tracing::warn!(session_id = %id, error = %e, "cannot read a deleted session's last record");
            None
        }
        Err(_) => {
            tracing::warn!(session_id = %id, "reading a deleted session's last record panicked (a damaged outbox page)");
            None
        }
    }
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
    //! The pass against a scripted in-memory source and a `BTreeMap` store that each pass's
    //! output is committed to (as the daemon commits to the outbox): what it asks the source,
    //! when it reads the clock, and what it keeps. (The real OpenCode source goes through the
    //! same pass in the integration tests; these pin the ordering rules, which a real database
    //! cannot time exactly.)

    use std::collections::{BTreeMap, VecDeque};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::export::ExportOptions;
    use crate::source::{
        ChangeMarker, Changes, HeadsPage, Observation, SessionHead, SessionSnapshot, TurnEnd,
    };
    use crate::track::Rules;

    /// Answers `changes` from a script; when an answer is taken, the shared clock jumps to the
    /// time the script gives for it (as if the source's read took that long). Listings page
    /// through `sessions` (their heads at `counter`), and count the pages asked for.
    struct Scripted {
        changes: VecDeque<(Changes, i64)>,
        clock: Arc<Mutex<i64>>,
        sessions: Vec<SessionSnapshot>,
        /// Heads' change counters and parents, by id (1 and none when not set).
        counters: BTreeMap<String, (i64, Option<String>)>,
        /// Sessions whose observe (`Some(true)`) or snapshot (`Some(false)`) is a bad row.
        bad: Vec<(SessionId, bool)>,
        pages: usize,
    }

    impl Scripted {
        fn new(clock: &Arc<Mutex<i64>>, sessions: Vec<SessionSnapshot>) -> Scripted {
            Scripted {
                changes: VecDeque::new(),
                clock: clock.clone(),
                sessions,
                counters: BTreeMap::new(),
                bad: Vec::new(),
                pages: 0,
            }
        }

        fn bad_row(&self, id: &SessionId, observing: bool) -> Result<(), SourceError> {
            if self.bad.iter().any(|(b, o)| b == id && *o == observing) {
                return Err(SourceError::BadRow {
                    path: "/x".into(),
                    message: "invalid column type".into(),
                });
            }
            Ok(())
        }

        fn head_of(&self, s: &SessionSnapshot) -> SessionHead {
            let (counter, parent) = self
                .counters
                .get(s.id.as_str())
                .cloned()
                .unwrap_or((1, None));
            SessionHead {
                parent_id: parent.map(SessionId::from),
                ..head(s.id.as_str(), counter)
            }
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
        fn heads_after(
            &mut self,
            after: Option<&SessionId>,
            limit: usize,
        ) -> Result<HeadsPage, SourceError> {
            self.pages += 1;
            let mut heads: Vec<SessionHead> = self
                .sessions
                .iter()
                .filter(|s| after.is_none_or(|a| s.id.as_str() > a.as_str()))
                .map(|s| self.head_of(s))
                .collect();
            heads.sort_by(|a, b| a.id.cmp(&b.id));
            let end = heads.len() <= limit;
            heads.truncate(limit);
            Ok(HeadsPage { heads, end })
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

    fn rescan() -> Changes {
        Changes::Rescan {
            fresh: true,
            sessions: None,
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

    /// The committed `state` tree, and a pass that commits into it.
    #[derive(Default)]
    struct Store(BTreeMap<Vec<u8>, Vec<u8>>);

    impl Store {
        fn run(
            &mut self,
            source: &mut Scripted,
            tracker: &mut Tracker,
            chunk: usize,
            mode: Mode,
        ) -> PassOutput {
            let clock = source.clock.clone();
            let out = pass(
                source,
                tracker,
                &ctx(),
                || *clock.lock().unwrap(),
                PassOptions {
                    chunk_sessions: chunk,
                    mode,
                    budget_bytes: u64::MAX,
                    store: &self.0,
                    progress: None,
                    held_deletions: false,
                },
            )
            .unwrap();
            for (k, v) in &out.state_puts {
                self.0.insert(k.clone(), v.clone());
            }
            for k in &out.state_removes {
                self.0.remove(k);
            }
            out
        }

        /// Passes until one says no work is left; the ids exported, in order.
        fn drain(
            &mut self,
            source: &mut Scripted,
            tracker: &mut Tracker,
            chunk: usize,
        ) -> Vec<(Trigger, String)> {
            let mut exported = Vec::new();
            for _ in 0..1000 {
                let out = self.run(source, tracker, chunk, Mode::Flush);
                exported.extend(
                    out.exported
                        .iter()
                        .map(|e| (e.trigger, e.record.session_id.clone())),
                );
                if !out.more {
                    return exported;
                }
            }
            panic!("the passes never finished");
        }

        fn keys(&self, prefix: &[u8]) -> Vec<String> {
            self.0
                .keys()
                .filter_map(|k| k.strip_prefix(prefix))
                .map(|k| String::from_utf8(k.to_vec()).unwrap())
                .collect()
        }
    }

    fn ids(exported: &[(Trigger, String)]) -> Vec<&str> {
        exported.iter().map(|(_, id)| id.as_str()).collect()
    }

    /// The keys the outbox leaves unread at open are exactly the tracker's last records.
    #[test]
    fn the_outbox_leaves_unread_at_open_exactly_the_last_records() {
        assert_eq!(track::RECORD_PREFIX, crate::queue::LAZY_STATE_PREFIX);
        for other in [
            track::STATE_PREFIX,
            track::CHILD_PREFIX,
            track::GONE_PREFIX,
            track::HELD_PREFIX,
        ] {
            assert!(!other.starts_with(crate::queue::LAZY_STATE_PREFIX));
        }
    }

    /// A history of `n` sessions (`ses_00000`…), each exported once by the passes it took: the
    /// session ids, the source, the tracker and its store, and the first passes' exports.
    fn exported_history(
        n: usize,
    ) -> (
        Vec<String>,
        Scripted,
        Tracker,
        Store,
        Vec<(Trigger, String)>,
    ) {
        let all: Vec<String> = (0..n).map(|i| format!("ses_{i:05}")).collect();
        let clock = Arc::new(Mutex::new(1_000));
        let mut source = Scripted::new(&clock, all.iter().map(|id| session(id, 900)).collect());
        source.changes = VecDeque::from([(rescan(), 0)]);
        let mut tracker = Tracker::new(immediate_rules());
        let mut store = Store::default();
        let first = store.drain(&mut source, &mut tracker, CHUNK_SESSIONS);
        (all, source, tracker, store, first)
    }

    #[test]
    fn a_deletion_is_stamped_with_the_clock_read_after_the_read_that_saw_it() {
        let clock = Arc::new(Mutex::new(1_000));
        let mut source = Scripted::new(&clock, vec![session("ses_a", 900)]);
        source.changes = VecDeque::from([
            (rescan(), 0),
            (
                Changes::Delta {
                    heads: Vec::new(),
                    gone: vec!["ses_a".into()],
                },
                // The read that sees the deletion finishes at 50_000.
                50_000,
            ),
        ]);
        let mut tracker = Tracker::new(immediate_rules());
        let mut store = Store::default();
        let first = store.run(&mut source, &mut tracker, CHUNK_SESSIONS, Mode::Live);
        assert_eq!(
            first
                .exported
                .iter()
                .map(|e| (e.trigger, e.record.session_id.as_str()))
                .collect::<Vec<_>>(),
            [(Trigger::Idle, "ses_a")]
        );
        source.sessions.clear();
        let second = store.run(&mut source, &mut tracker, CHUNK_SESSIONS, Mode::Live);
        assert_eq!(second.exported.len(), 1, "{:?}", second.exported);
        let deleted = &second.exported[0];
        assert_eq!(deleted.trigger, Trigger::Deleted);
        assert_eq!(deleted.record.deleted_at, Some(50_000));
        assert_eq!(deleted.record.exported_at, 50_000);
        assert_eq!(second.now_ms, 50_000);
        assert!(store.keys(b"").is_empty(), "{:?}", store.keys(b""));
    }

    /// One session's data that cannot be read (at observe or at snapshot) never stops the pass:
    /// the other sessions are exported; the unreadable ones are not, and nothing fails.
    #[test]
    fn a_session_whose_rows_cannot_be_read_is_skipped_and_the_others_exported() {
        let clock = Arc::new(Mutex::new(1_000));
        let mut source = Scripted::new(
            &clock,
            vec![
                session("ses_a", 900),
                session("ses_b", 900),
                session("ses_c", 900),
            ],
        );
        source.changes = VecDeque::from([(rescan(), 0)]);
        source.bad = vec![("ses_a".into(), true), ("ses_c".into(), false)];
        let mut tracker = Tracker::new(immediate_rules());
        let out = Store::default().run(&mut source, &mut tracker, CHUNK_SESSIONS, Mode::Live);
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
    /// the first chunks (a kill mid-way) exports exactly the sessions not committed yet. Between
    /// passes the tracker keeps no settled session in memory.
    #[test]
    fn a_long_history_is_exported_in_chunks_each_session_once() {
        let ids_: Vec<String> = (0..7).map(|i| format!("ses_{i}")).collect();
        let clock = Arc::new(Mutex::new(1_000));
        let mut source = Scripted::new(&clock, ids_.iter().map(|id| session(id, 900)).collect());
        source.changes = VecDeque::from([(rescan(), 0)]);
        let exported_ids = |out: &PassOutput| -> Vec<String> {
            out.exported
                .iter()
                .map(|e| e.record.session_id.clone())
                .collect()
        };

        // Chunks of 3 sessions: 3 + 3 + 1, in id order.
        let mut tracker = Tracker::new(immediate_rules());
        let mut store = Store::default();
        let first = store.run(&mut source, &mut tracker, 3, Mode::Flush);
        assert_eq!(exported_ids(&first), ["ses_0", "ses_1", "ses_2"]);
        assert_eq!(first.observed, 3);
        assert!(first.more);
        assert_eq!(tracker.in_memory(), 0, "settled sessions leave memory");
        let committed = Store(store.0.clone());
        let second = store.run(&mut source, &mut tracker, 3, Mode::Flush);
        assert_eq!(exported_ids(&second), ["ses_3", "ses_4", "ses_5"]);
        assert!(second.more);
        let third = store.run(&mut source, &mut tracker, 3, Mode::Flush);
        assert_eq!(exported_ids(&third), ["ses_6"]);
        assert!(!third.more, "nothing is left");
        assert!(store
            .run(&mut source, &mut tracker, 3, Mode::Flush)
            .is_empty());
        assert_eq!(tracker.len(), 7);
        assert_eq!(tracker.in_memory(), 0);

        // Killed after the first chunk's commit: the restarted daemon resumes from it, lists
        // every session again, and exports only the 4 not committed.
        let mut store = committed;
        let mut resumed = Tracker::resume(immediate_rules(), &store.0).unwrap();
        assert_eq!(resumed.len(), 3);
        source.changes = VecDeque::from([(rescan(), 0)]);
        let again = store.drain(&mut source, &mut resumed, 3);
        assert_eq!(ids(&again), ["ses_3", "ses_4", "ses_5", "ses_6"]);
    }

    /// A listing over more sessions than a page reads many pages, compares each session once,
    /// and finds the ones that vanished anywhere in the id range, the last page's tail included.
    #[test]
    fn a_listing_pages_through_every_session_and_finds_the_gone_ones() {
        let n = LIST_PAGE * 2 + 7;
        let (all, mut source, mut tracker, mut store, first) = exported_history(n);
        assert_eq!(first.len(), n);
        assert_eq!(store.keys(track::STATE_PREFIX).len(), n);

        // Gone: one in the first page, one in the middle, the last two (after the last page's
        // last id). Nothing else changed: a listing observes nothing.
        let gone = [&all[3], &all[LIST_PAGE + 1], &all[n - 2], &all[n - 1]];
        source
            .sessions
            .retain(|s| !gone.iter().any(|g| g.as_str() == s.id.as_str()));
        source.changes = VecDeque::from([(
            Changes::Rescan {
                fresh: false,
                sessions: None,
            },
            0,
        )]);
        source.pages = 0;
        let second = store.drain(&mut source, &mut tracker, CHUNK_SESSIONS);
        let mut deleted: Vec<&str> = ids(&second);
        deleted.sort();
        assert_eq!(deleted, gone.map(String::as_str));
        assert!(second.iter().all(|(t, _)| *t == Trigger::Deleted));
        assert_eq!(source.pages, 3, "one page per {LIST_PAGE} sessions");
        assert_eq!(store.keys(track::STATE_PREFIX).len(), n - 4);
        assert!(store.keys(track::GONE_PREFIX).is_empty());
        assert_eq!(tracker.len(), n - 4);
    }

    /// Deletions found over a whole listing are held when they look like a replaced database
    /// (more than half of what was tracked), though every page alone holds few of them.
    #[test]
    fn deletions_over_a_whole_listing_are_held_together() {
        let n = LIST_PAGE * 3;
        let (_, mut source, mut tracker, mut store, _) = exported_history(n);

        // Two of every three sessions vanish, spread over every page.
        source.sessions.retain(|s| s.id.as_str().ends_with('0'));
        let kept = source.sessions.len();
        source.changes = VecDeque::from([(rescan(), 0)]);
        let mut held = 0;
        for _ in 0..1000 {
            let out = store.run(&mut source, &mut tracker, CHUNK_SESSIONS, Mode::Flush);
            assert!(out.exported.is_empty(), "no deletion is exported");
            held += out.held;
            if !out.more {
                break;
            }
        }
        assert_eq!(held, n - kept);
        assert_eq!(store.keys(track::HELD_PREFIX).len(), n - kept);
        assert_eq!(store.keys(track::STATE_PREFIX).len(), kept);
    }

    /// With `skip_subagent_sessions`, a child's marker is kept in the store (not in memory), so
    /// a child that changed while the daemon was stopped re-exports its parent after a restart.
    #[test]
    fn a_child_that_changed_while_stopped_re_exports_its_parent() {
        let clock = Arc::new(Mutex::new(1_000));
        let mut source = Scripted::new(&clock, vec![session("ses_p", 900), session("ses_q", 900)]);
        source
            .counters
            .insert("ses_q".into(), (1, Some("ses_p".into())));
        source.changes = VecDeque::from([(rescan(), 0)]);
        let mut tracker = Tracker::new(immediate_rules());
        let mut store = Store::default();
        let first = store.drain(&mut source, &mut tracker, CHUNK_SESSIONS);
        assert_eq!(
            ids(&first),
            ["ses_p"],
            "the child is not exported on its own"
        );
        assert_eq!(store.keys(track::CHILD_PREFIX), ["ses_q"]);

        // Stopped; the child moves; a restarted tracker lists it and re-exports the parent.
        source
            .counters
            .insert("ses_q".into(), (2, Some("ses_p".into())));
        let mut resumed = Tracker::resume(immediate_rules(), &store.0).unwrap();
        source.changes = VecDeque::from([(rescan(), 0)]);
        *clock.lock().unwrap() = 2_000;
        let again = store.drain(&mut source, &mut resumed, CHUNK_SESSIONS);
        assert_eq!(ids(&again), ["ses_p"]);
        // Unchanged since: nothing more.
        source.changes = VecDeque::from([(rescan(), 0)]);
        assert!(store
            .drain(&mut source, &mut resumed, CHUNK_SESSIONS)
            .is_empty());
    }

    /// A range of stored sessions longer than the tracker reads at once (every session gone at
    /// once, as when the database is emptied) is split over passes, and all of it is found.
    #[test]
    fn an_emptied_source_is_found_gone_in_bounded_steps() {
        let n = track::LIST_BUDGET * 2 + 5;
        let (_, mut source, mut tracker, mut store, _) = exported_history(n);
        source.sessions.clear();
        source.changes = VecDeque::from([(rescan(), 0)]);
        let mut biggest = 0;
        let mut held = 0;
        for _ in 0..1000 {
            let out = store.run(&mut source, &mut tracker, CHUNK_SESSIONS, Mode::Flush);
            biggest = biggest.max(out.state_puts.len() + out.state_removes.len());
            held += out.held;
            if !out.more {
                break;
            }
        }
        assert_eq!(held, n, "a wholesale disappearance is held");
        assert!(
            biggest <= track::LIST_BUDGET * 3,
            "one pass wrote {biggest} keys"
        );
    }
}
