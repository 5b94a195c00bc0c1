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
//! Blocking IO: run it on a blocking thread.

use crate::export::{self, ExportContext, SessionExport};
use crate::source::{Activity, SessionId, SessionSource, SourceError};
use crate::track::{self, Mode, Need, Tracker, Trigger};

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

/// How a pass runs.
pub struct PassOptions<'a> {
    /// Live or flush (see [`Mode`]).
    pub mode: Mode,
    /// Stop exporting once the records reach this many bytes (deletions always go out).
    pub budget_bytes: u64,
    /// Reads a stored last record (`record/<id>` of the outbox's `state` tree).
    pub stored_record: &'a dyn Fn(&[u8]) -> Option<Vec<u8>>,
    /// Advanced once per session head on a pass that lists every session.
    pub progress: Option<&'a indicatif::ProgressBar>,
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
    let plan = tracker.changes(changes, now);
    out.heads_read = plan.heads;
    let progress = options.progress.filter(|_| plan.heads > 0);
    if let Some(bar) = progress {
        bar.set_length(plan.observe.len() as u64);
    }

    for gone in plan.gone {
        if gone.trigger != Some(Trigger::Deleted) {
            continue;
        }
        let key = track::record_key(&gone.id);
        let stored = gone
            .unstored_record
            .or_else(|| (options.stored_record)(&key));
        let last = stored.and_then(|json| serde_json::from_slice::<SessionExport>(&json).ok());
        match last {
            Some(last) => {
                let record = export::mark_deleted(&last, now);
                let json = serde_json::to_vec(&record).expect("a record serializes");
                out.push(Trigger::Deleted, record, json);
            }
            None => {
                tracing::warn!(session_id = %gone.id, "a deleted session's last record is missing or unreadable; its deletion is not exported")
            }
        }
    }

    for (id, marker) in plan.observe {
        if let Some(bar) = progress {
            bar.inc(1);
        }
        let observation = source.observe(&id)?;
        out.observed += usize::from(observation.is_some());
        let need = tracker.observed(&id, marker, observation.as_ref(), now, mode);
        match need {
            Need::Nothing => {}
            Need::Record(trigger) => {
                let Some(snapshot) = source.snapshot(&id)? else {
                    continue;
                };
                out.snapshots_read += 1;
                let record = export::build(&snapshot, trigger, &ctx);
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
                Activity::Ended(_) => {}
            }
        }
    }

    for (id, trigger) in tracker.due(now, mode) {
        if out.bytes >= options.budget_bytes {
            out.deferred += 1;
            continue;
        }
        let Some(snapshot) = source.snapshot(&id)? else {
            tracker.vanished(&id);
            continue;
        };
        out.snapshots_read += 1;
        let record = export::build(&snapshot, trigger, &ctx);
        let json = serde_json::to_vec(&record).expect("a record serializes");
        if tracker.exported(&id, now, mode, track::state::record_digest(&json)) {
            out.state_puts.push((track::record_key(&id), json.clone()));
        }
        out.push(trigger, record, json);
    }

    let writes = tracker.take_writes();
    out.state_puts.extend(writes.puts);
    out.state_removes.extend(writes.removes);
    Ok(out)
}
