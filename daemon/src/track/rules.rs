//! The rules that decide when a session is exported, as pure functions of a session's state,
//! what the source observed and the time. No IO, no clock: every input is an argument.
//!
//! - [`next_phase`]: a new observation → the session's [`Phase`]; an end of turn keeps its
//!   debounce start while it stays the same end of turn.
//! - [`due`]: whether a session is to be exported now, and for which [`Trigger`] and
//!   [`Ending`]:
//!   - an ended turn once it stayed ended for `debounce_ms` (counted from its completion, so a
//!     turn that ended long ago is due at once), and its todos are all done — with todos left
//!     open, after `final_after_ms` instead; an end of turn already exported is not due again,
//!     unless the archive time changed or a subagent changed after the export (then one
//!     debounce window after that change);
//!   - a prompt with no reply started ([`Phase::AwaitingReply`]: OpenCode's `noReply`) once it
//!     was sent [`NO_REPLY_AFTER_MS`] ago: from then on it is an ended turn (as idle) whose
//!     debounce started at that moment. A normal prompt gets its reply started within
//!     milliseconds, so it is never seen at that age;
//!   - a busy turn with no write for `stale_after_ms` (the agent died mid-turn), once per last
//!     write, as [`Trigger::Stale`].
//!   - In [`Mode::Flush`] (`once`) the debounce and the todo timer count as elapsed: everything
//!     that has ended is due; a busy turn still waits for `stale_after_ms`, and a prompt with
//!     no reply for [`NO_REPLY_AFTER_MS`].
//! - [`wants_timer`]: whether a session has an export still to come on a timer.
//! - [`child_changed`]: whether a subagent session's change re-exports its parent.
//! - [`on_gone`]: a session gone from the source is exported as deleted when a record of it
//!   was built.

use super::state::{Ending, ExportKey, Phase, SessionState};
use super::Trigger;
use crate::source::{Activity, ChangeMarker, Observation};

/// How long after it was sent a prompt with no reply started counts as an ended turn (ms).
///
/// OpenCode writes the reply's assistant message as the first step of the turn, tens of
/// milliseconds after the prompt (26 ms in the harness's data); a `noReply` prompt gets none,
/// ever, and OpenCode stays idle without publishing anything. 30 s leaves a slow start (a
/// cold MCP server, a loaded machine) far inside the window while still exporting a
/// `noReply` prompt well before the stale timer would.
pub const NO_REPLY_AFTER_MS: i64 = 30_000;

/// Timing and scope rules (from `[export]`).
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
    /// [`NO_REPLY_AFTER_MS`] (not configurable; a field so the table tests can use short times).
    pub no_reply_after_ms: i64,
}

impl From<&crate::config::ExportConfig> for Rules {
    fn from(c: &crate::config::ExportConfig) -> Rules {
        Rules {
            debounce_ms: c.debounce_ms as i64,
            final_after_ms: (c.final_after_secs as i64).saturating_mul(1000),
            stale_after_ms: (c.stale_after_secs as i64).saturating_mul(1000),
            skip_subagent_sessions: c.skip_subagent_sessions,
            no_reply_after_ms: NO_REPLY_AFTER_MS,
        }
    }
}

/// How [`due`] treats timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The daemon: every timer runs.
    Live,
    /// `once`: there is no later pass, so whatever has ended is exported now.
    Flush,
}

/// The phase after `observation`, given the `previous` one, at `now_ms`.
pub fn next_phase(previous: Option<&Phase>, observation: &Observation, now_ms: i64) -> Phase {
    match &observation.activity {
        Activity::Empty => Phase::Empty,
        Activity::Busy => Phase::Busy {
            last_write_ms: observation.last_write_ms,
        },
        Activity::AwaitingReply {
            message_id,
            sent_at,
        } => Phase::AwaitingReply {
            message_id: message_id.clone(),
            sent_at_ms: *sent_at,
            todos_open: observation.todos_open,
        },
        Activity::Ended(end) => {
            let seen_at_ms = match previous {
                Some(Phase::Ended {
                    message_id,
                    seen_at_ms,
                    ..
                }) if *message_id == end.message_id => *seen_at_ms,
                // The window counts from the terminal message's completion (the agent's clock
                // on this machine), so a turn that ended long ago — a backfill, or one that
                // ended while the daemon was down — is due at once.
                _ => end.completed_at.min(now_ms),
            };
            Phase::Ended {
                message_id: end.message_id.clone(),
                error: end.error.clone(),
                seen_at_ms,
                todos_open: observation.todos_open,
            }
        }
    }
}

/// True when `new` is an end of turn that `previous` was not (another terminal message, or
/// none before).
pub fn entering_end(new: &Phase, previous: Option<&Phase>) -> bool {
    match (new, previous) {
        (
            Phase::Ended { message_id, .. },
            Some(Phase::Ended {
                message_id: old, ..
            }),
        ) => message_id != old,
        (Phase::Ended { .. }, _) => true,
        _ => false,
    }
}

fn ended_trigger(error_present: bool) -> Trigger {
    if error_present {
        Trigger::Error
    } else {
        Trigger::Idle
    }
}

/// The trigger a session in `phase` exports as: an ended turn as idle or error, anything
/// else (a turn still running) as stale.
pub fn trigger_of(phase: &Phase) -> Trigger {
    match phase {
        Phase::Ended { error, .. } => ended_trigger(error.is_some()),
        Phase::AwaitingReply { .. } => Trigger::Idle,
        Phase::Busy { .. } | Phase::Empty => Trigger::Stale,
    }
}

/// Whether `state` is due for export at `now_ms`, and as what; see the module docs.
pub fn due(
    state: &SessionState,
    now_ms: i64,
    rules: &Rules,
    mode: Mode,
) -> Option<(Trigger, Ending)> {
    let flush = mode == Mode::Flush;
    match &state.phase {
        Phase::Empty => None,
        Phase::Ended {
            message_id,
            error,
            seen_at_ms,
            todos_open,
        } => due_turn(
            state,
            Turn {
                message_id,
                trigger: ended_trigger(error.is_some()),
                seen_at_ms: *seen_at_ms,
                todos_open: *todos_open,
            },
            now_ms,
            rules,
            flush,
        ),
        Phase::AwaitingReply {
            message_id,
            sent_at_ms,
            todos_open,
        } => {
            let ended_at = sent_at_ms.saturating_add(rules.no_reply_after_ms);
            if now_ms < ended_at {
                return None;
            }
            due_turn(
                state,
                Turn {
                    message_id,
                    trigger: Trigger::Idle,
                    seen_at_ms: ended_at,
                    todos_open: *todos_open,
                },
                now_ms,
                rules,
                flush,
            )
        }
        Phase::Busy { last_write_ms } => {
            let ending = Ending::Stale {
                last_write_ms: *last_write_ms,
            };
            if state.exported.as_ref().is_some_and(|k| k.ending == ending) {
                return None;
            }
            if now_ms < last_write_ms.saturating_add(rules.stale_after_ms) {
                return None;
            }
            Some((Trigger::Stale, ending))
        }
    }
}

/// An ended turn, as [`due_turn`] weighs it.
struct Turn<'a> {
    message_id: &'a str,
    trigger: Trigger,
    /// When its debounce window started (ms).
    seen_at_ms: i64,
    todos_open: bool,
}

/// [`due`] for an ended turn: debounce, the todo rule, and once per end of turn (again after a
/// child's change or an archive).
fn due_turn(
    state: &SessionState,
    turn: Turn<'_>,
    now_ms: i64,
    rules: &Rules,
    flush: bool,
) -> Option<(Trigger, Ending)> {
    let ending = Ending::Turn {
        message_id: turn.message_id.to_string(),
    };
    let key = ExportKey {
        ending: ending.clone(),
        archived_at: state.marker.archived_at,
    };
    if state.exported.as_ref() == Some(&key) {
        let since = state.children_changed_at_ms?;
        let settled = flush || now_ms >= since.saturating_add(rules.debounce_ms);
        return settled.then_some((turn.trigger, ending));
    }
    let same_turn = state.exported.as_ref().is_some_and(|k| k.ending == ending);
    let settled = flush || now_ms >= turn.seen_at_ms.saturating_add(rules.debounce_ms);
    let todo_rule = flush
        || !turn.todos_open
        || same_turn
        || now_ms >= turn.seen_at_ms.saturating_add(rules.final_after_ms);
    (settled && todo_rule).then_some((turn.trigger, ending))
}

/// Whether a session has an export still to come on a timer (debounce, todos, stale, a
/// child's change).
pub fn wants_timer(state: &SessionState) -> bool {
    let exported = state.exported.as_ref();
    match &state.phase {
        Phase::Empty => false,
        Phase::Ended { message_id, .. } | Phase::AwaitingReply { message_id, .. } => {
            state.children_changed_at_ms.is_some()
                || exported
                    != Some(&ExportKey {
                        ending: Ending::Turn {
                            message_id: message_id.clone(),
                        },
                        archived_at: state.marker.archived_at,
                    })
        }
        Phase::Busy { last_write_ms } => exported.is_none_or(|k| {
            k.ending
                != Ending::Stale {
                    last_write_ms: *last_write_ms,
                }
        }),
    }
}

/// Whether a subagent session whose marker was `previous` and is `now` changed in a way that
/// re-exports its parent. On a fresh look (the first after a start, when nothing is known of
/// children) a child never seen before is not a change; later it is (a new subagent).
pub fn child_changed(previous: Option<ChangeMarker>, now: ChangeMarker, fresh: bool) -> bool {
    match previous {
        Some(p) => p != now,
        None => !fresh,
    }
}

/// What a session gone from the source exports: [`Trigger::Deleted`] when a record of it was
/// built (the deleted record is that one), else nothing.
pub fn on_gone(state: &SessionState) -> Option<Trigger> {
    state.record_digest.is_some().then_some(Trigger::Deleted)
}

/// Deletions in one pass from which on they look like a replaced database, not a user's doing.
pub const WHOLESALE_MIN: usize = 3;

/// Whether the deletions seen by one pass are held instead of exported: `deleted` sessions
/// (tracked ones with a record, now gone) out of the `tracked` sessions before the pass. A
/// database deleted and recreated, or replaced by another, makes every known session vanish at
/// once; a user deletes sessions one or a few at a time. So: at least [`WHOLESALE_MIN`] and more
/// than half of what was tracked. Held deletions wait for `queue confirm-deletions`, or are
/// released when the sessions come back.
pub fn hold_deletions(tracked: usize, deleted: usize) -> bool {
    deleted >= WHOLESALE_MIN && deleted * 2 > tracked
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (tracked before the pass, deleted in it) → held?
    #[test]
    fn a_wholesale_vanishing_is_held_a_few_deletions_are_not() {
        for (tracked, deleted, held) in [
            (30, 30, true),     // the database recreated
            (25, 25, true),     // replaced by another one
            (10, 6, true),      // more than half at once
            (10, 5, false),     // exactly half
            (1, 1, false),      // the only session deleted
            (2, 2, false),      // below the minimum
            (3, 3, true),       // at the minimum
            (50_000, 2, false), // a user deleting two
            (50_000, 0, false),
            (0, 0, false),
        ] {
            assert_eq!(
                hold_deletions(tracked, deleted),
                held,
                "{deleted} of {tracked}"
            );
        }
    }
    use crate::source::{TurnEnd, TurnError};

    const RULES: Rules = Rules {
        debounce_ms: 1_000,
        final_after_ms: 60_000,
        stale_after_ms: 3_600_000,
        skip_subagent_sessions: true,
        no_reply_after_ms: 30_000,
    };

    fn marker(archived_at: Option<i64>) -> ChangeMarker {
        ChangeMarker {
            counter: 1,
            updated_at: 1,
            archived_at,
        }
    }

    fn ended(id: &str, seen_at_ms: i64, todos_open: bool, error: bool) -> Phase {
        Phase::Ended {
            message_id: id.into(),
            error: error.then(|| TurnError {
                name: "APIError".into(),
                message: String::new(),
            }),
            seen_at_ms,
            todos_open,
        }
    }

    fn awaiting(id: &str, sent_at_ms: i64, todos_open: bool) -> Phase {
        Phase::AwaitingReply {
            message_id: id.into(),
            sent_at_ms,
            todos_open,
        }
    }

    fn turn(id: &str) -> Ending {
        Ending::Turn {
            message_id: id.into(),
        }
    }

    fn exported(ending: Ending, archived_at: Option<i64>) -> Option<ExportKey> {
        Some(ExportKey {
            ending,
            archived_at,
        })
    }

    fn state(phase: Phase, exported: Option<ExportKey>) -> SessionState {
        SessionState {
            phase,
            exported,
            ..SessionState::new(marker(None))
        }
    }

    /// One row of the [`due`] table.
    struct Case {
        name: &'static str,
        state: SessionState,
        now: i64,
        mode: Mode,
        expected: Option<(Trigger, Ending)>,
    }

    fn check(case: &Case) {
        assert_eq!(
            due(&case.state, case.now, &RULES, case.mode),
            case.expected,
            "{}",
            case.name
        );
        // A session due now wants a timer (nothing is exported without one being armed).
        if case.expected.is_some() {
            assert!(
                wants_timer(&case.state),
                "{}: due without a timer",
                case.name
            );
        }
    }

    #[test]
    fn due_table() {
        use Mode::*;
        let archived = SessionState {
            marker: marker(Some(50)),
            ..state(ended("m2", 0, false, false), exported(turn("m2"), None))
        };
        let child_changed_at = |at| SessionState {
            children_changed_at_ms: Some(at),
            ..state(ended("m2", 0, false, false), exported(turn("m2"), None))
        };
        let cases = [
            Case {
                name: "empty is never due",
                state: state(Phase::Empty, None),
                now: i64::MAX / 2,
                mode: Live,
                expected: None,
            },
            Case {
                name: "inside the debounce window",
                state: state(ended("m2", 100, false, false), None),
                now: 1_099,
                mode: Live,
                expected: None,
            },
            Case {
                name: "debounce elapsed",
                state: state(ended("m2", 100, false, false), None),
                now: 1_100,
                mode: Live,
                expected: Some((Trigger::Idle, turn("m2"))),
            },
            Case {
                name: "an error ends as error",
                state: state(ended("m2", 100, false, true), None),
                now: 1_100,
                mode: Live,
                expected: Some((Trigger::Error, turn("m2"))),
            },
            Case {
                name: "open todos wait for final_after",
                state: state(ended("m2", 100, true, false), None),
                now: 60_099,
                mode: Live,
                expected: None,
            },
            Case {
                name: "open todos after final_after",
                state: state(ended("m2", 100, true, false), None),
                now: 60_100,
                mode: Live,
                expected: Some((Trigger::Idle, turn("m2"))),
            },
            Case {
                name: "exported turn is not due again",
                state: state(ended("m2", 100, false, false), exported(turn("m2"), None)),
                now: 10_000_000,
                mode: Live,
                expected: None,
            },
            Case {
                name: "a new end of turn is due",
                state: state(ended("m3", 100, false, false), exported(turn("m2"), None)),
                now: 1_100,
                mode: Live,
                expected: Some((Trigger::Idle, turn("m3"))),
            },
            Case {
                name: "archived after the export: re-exported after the debounce",
                state: archived.clone(),
                now: 1_000,
                mode: Live,
                expected: Some((Trigger::Idle, turn("m2"))),
            },
            Case {
                name: "archive of an exported turn with open todos does not wait for final_after",
                state: SessionState {
                    marker: marker(Some(50)),
                    ..state(ended("m2", 100, true, false), exported(turn("m2"), None))
                },
                now: 1_100,
                mode: Live,
                expected: Some((Trigger::Idle, turn("m2"))),
            },
            Case {
                name: "child changed: inside its window",
                state: child_changed_at(5_000),
                now: 5_999,
                mode: Live,
                expected: None,
            },
            Case {
                name: "child changed: window elapsed",
                state: child_changed_at(5_000),
                now: 6_000,
                mode: Live,
                expected: Some((Trigger::Idle, turn("m2"))),
            },
            Case {
                name: "a prompt with no reply, younger than no_reply_after",
                state: state(awaiting("m3", 100, false), None),
                now: 30_099,
                mode: Live,
                expected: None,
            },
            Case {
                name: "a prompt with no reply is not due in once either, while young",
                state: state(awaiting("m3", 100, false), None),
                now: 30_099,
                mode: Flush,
                expected: None,
            },
            Case {
                name: "a prompt with no reply: debounce counts from no_reply_after",
                state: state(awaiting("m3", 100, false), None),
                now: 31_099,
                mode: Live,
                expected: None,
            },
            Case {
                name: "a prompt with no reply ends as idle after no_reply_after + debounce",
                state: state(awaiting("m3", 100, false), None),
                now: 31_100,
                mode: Live,
                expected: Some((Trigger::Idle, turn("m3"))),
            },
            Case {
                name: "a prompt with no reply, once: due as soon as it is old enough",
                state: state(awaiting("m3", 100, true), None),
                now: 30_100,
                mode: Flush,
                expected: Some((Trigger::Idle, turn("m3"))),
            },
            Case {
                name: "a prompt with no reply and open todos waits for final_after",
                state: state(awaiting("m3", 100, true), None),
                now: 90_099,
                mode: Live,
                expected: None,
            },
            Case {
                name: "a prompt with no reply already exported is not due again",
                state: state(awaiting("m3", 100, false), exported(turn("m3"), None)),
                now: 10_000_000,
                mode: Live,
                expected: None,
            },
            Case {
                name: "busy before stale_after",
                state: state(Phase::Busy { last_write_ms: 0 }, None),
                now: 3_599_999,
                mode: Live,
                expected: None,
            },
            Case {
                name: "busy and stale",
                state: state(Phase::Busy { last_write_ms: 0 }, None),
                now: 3_600_000,
                mode: Live,
                expected: Some((Trigger::Stale, Ending::Stale { last_write_ms: 0 })),
            },
            Case {
                name: "stale exported once per last write",
                state: state(
                    Phase::Busy { last_write_ms: 0 },
                    exported(Ending::Stale { last_write_ms: 0 }, None),
                ),
                now: 9_000_000,
                mode: Live,
                expected: None,
            },
            Case {
                name: "a later write makes it stale again",
                state: state(
                    Phase::Busy { last_write_ms: 10 },
                    exported(Ending::Stale { last_write_ms: 0 }, None),
                ),
                now: 3_600_010,
                mode: Live,
                expected: Some((Trigger::Stale, Ending::Stale { last_write_ms: 10 })),
            },
            Case {
                name: "flush: inside the debounce window",
                state: state(ended("m2", 100, false, false), None),
                now: 100,
                mode: Flush,
                expected: Some((Trigger::Idle, turn("m2"))),
            },
            Case {
                name: "flush: open todos",
                state: state(ended("m2", 100, true, false), None),
                now: 100,
                mode: Flush,
                expected: Some((Trigger::Idle, turn("m2"))),
            },
            Case {
                name: "flush: exported turn stays exported",
                state: state(ended("m2", 100, false, false), exported(turn("m2"), None)),
                now: 100,
                mode: Flush,
                expected: None,
            },
            Case {
                name: "flush: busy still waits for stale_after",
                state: state(Phase::Busy { last_write_ms: 0 }, None),
                now: 1_000,
                mode: Flush,
                expected: None,
            },
            Case {
                name: "flush: child change",
                state: child_changed_at(5_000),
                now: 5_000,
                mode: Flush,
                expected: Some((Trigger::Idle, turn("m2"))),
            },
        ];
        for case in &cases {
            check(case);
        }
    }

    #[test]
    fn wants_timer_table() {
        let cases: [(&str, SessionState, bool); 6] = [
            ("empty", state(Phase::Empty, None), false),
            (
                "ended, not exported",
                state(ended("m2", 0, false, false), None),
                true,
            ),
            (
                "ended and exported",
                state(ended("m2", 0, false, false), exported(turn("m2"), None)),
                false,
            ),
            (
                "ended, exported before archiving",
                SessionState {
                    marker: marker(Some(5)),
                    ..state(ended("m2", 0, false, false), exported(turn("m2"), None))
                },
                true,
            ),
            (
                "busy, not yet stale-exported",
                state(Phase::Busy { last_write_ms: 3 }, None),
                true,
            ),
            (
                "busy, stale-exported at this write",
                state(
                    Phase::Busy { last_write_ms: 3 },
                    exported(Ending::Stale { last_write_ms: 3 }, None),
                ),
                false,
            ),
        ];
        for (name, s, expected) in cases {
            assert_eq!(wants_timer(&s), expected, "{name}");
        }
    }

    #[test]
    fn next_phase_keeps_the_window_of_the_same_end_of_turn_and_starts_new_ones_at_completion() {
        let obs = |activity, todos_open| Observation {
            activity,
            last_write_ms: 42,
            todos_open,
        };
        let end = |id: &str, completed_at| {
            Activity::Ended(TurnEnd {
                message_id: id.into(),
                completed_at,
                error: None,
            })
        };
        // (previous, observation, now, expected)
        let cases = [
            (None, obs(Activity::Empty, false), 10, Phase::Empty),
            (
                None,
                obs(Activity::Busy, false),
                10,
                Phase::Busy { last_write_ms: 42 },
            ),
            (
                Some(ended("m2", 5, false, false)),
                obs(
                    Activity::AwaitingReply {
                        message_id: "m3".into(),
                        sent_at: 7,
                    },
                    true,
                ),
                10,
                awaiting("m3", 7, true),
            ),
            (
                None,
                obs(end("m2", 5), true),
                10,
                ended("m2", 5, true, false),
            ),
            // A completion stamped in the future (another clock) starts the window now.
            (
                None,
                obs(end("m2", 50), false),
                10,
                ended("m2", 10, false, false),
            ),
            (
                Some(ended("m2", 3, false, false)),
                obs(end("m2", 5), false),
                10,
                ended("m2", 3, false, false),
            ),
            (
                Some(ended("m2", 3, false, false)),
                obs(end("m3", 8), false),
                10,
                ended("m3", 8, false, false),
            ),
            (
                Some(Phase::Busy { last_write_ms: 1 }),
                obs(end("m2", 8), false),
                10,
                ended("m2", 8, false, false),
            ),
        ];
        for (previous, o, now, expected) in cases {
            assert_eq!(
                next_phase(previous.as_ref(), &o, now),
                expected,
                "{previous:?} {o:?}"
            );
        }
    }

    #[test]
    fn entering_end_table() {
        let cases = [
            (ended("m2", 0, false, false), None, true),
            (
                ended("m2", 0, false, false),
                Some(Phase::Busy { last_write_ms: 0 }),
                true,
            ),
            (
                ended("m2", 0, false, false),
                Some(ended("m2", 0, false, false)),
                false,
            ),
            (
                ended("m3", 0, false, false),
                Some(ended("m2", 0, false, false)),
                true,
            ),
            (Phase::Busy { last_write_ms: 0 }, None, false),
            (Phase::Empty, Some(ended("m2", 0, false, false)), false),
        ];
        for (new, previous, expected) in cases {
            assert_eq!(
                entering_end(&new, previous.as_ref()),
                expected,
                "{new:?} after {previous:?}"
            );
        }
    }

    #[test]
    fn child_and_deletion_rules() {
        let a = marker(None);
        let b = marker(Some(1));
        // (previous, now, fresh, expected)
        let cases = [
            (Some(a), a, false, false),
            (Some(a), b, false, true),
            (Some(a), b, true, true),
            (None, a, true, false),
            (None, a, false, true),
        ];
        for (previous, now, fresh, expected) in cases {
            assert_eq!(
                child_changed(previous, now, fresh),
                expected,
                "{previous:?} → {now:?} fresh={fresh}"
            );
        }
        let mut s = state(ended("m2", 0, false, false), None);
        assert_eq!(on_gone(&s), None);
        s.record_digest = Some("d".into());
        assert_eq!(on_gone(&s), Some(Trigger::Deleted));
    }
}
