//! Busy or ended? The rules OpenCode uses to stop a turn and publish `session.idle` (and, for
//! errors, `session.error`), applied to database rows: the prompt loop (`oc/session/prompt.ts`
//! `runLoop`), the `!` shell command (`SessionPrompt.shell`) and `noReply` prompts.
//!
//! A session's turn has **ended** when its newest assistant message is newer than its newest
//! user message (in the order the source gives: the order the rows were written, see
//! [`written_in_order`](super::sql::written_in_order); OpenCode itself compares ids, which follow its clock), has
//! `time.completed`, and is terminal:
//! - it carries `error` (API errors, aborts as `MessageAbortedError`, …) → `session.error`;
//! - or it carries `structured` output;
//! - or `finish` is set, is not `tool-calls`, and the message has no tool part that OpenCode
//!   itself would still act on (tool parts run by the provider and calls interrupted by an
//!   abort do not count);
//! - or one of its tool parts failed because the user rejected a permission or dismissed a
//!   question (the turn stops with `finish: "tool-calls"`);
//! - or it has **no `finish`** and every tool part of it is settled (completed or failed): the
//!   message a `!` shell command writes (a synthetic user message "The following tool was
//!   executed by the user", then an assistant message holding the `bash` part, completed
//!   without a model step, so without `finish`). A model step always gets a `finish` when it
//!   completes, so this shape is only the shell's; OpenCode publishes `session.idle` after it.
//!
//! A newest user message newer than the newest (completed) assistant message is
//! [`Activity::AwaitingReply`]: a reply normally starts within milliseconds, while a `noReply`
//! prompt never gets one and OpenCode stays idle; the tracker tells them apart by age.
//!
//! Anything else with messages is **busy**: an assistant message without `time.completed`
//! (even with a newer, queued prompt), a `tool-calls` step whose next step is on its way, or a
//! step with a tool still running.

use crate::source::opencode::rows::{MessageRow, PartRow};
use crate::source::{Activity, TurnEnd, TurnError};

/// Classifies a session from its newest messages (`recent`, newest first) and the parts of the
/// newest assistant message among them.
pub fn classify(recent: &[MessageRow], assistant_parts: &[PartRow]) -> Activity {
    let newest_user = recent.iter().position(|m| m.info.is_user());
    let newest_assistant = recent.iter().position(|m| m.info.is_assistant());
    let assistant = newest_assistant.map(|i| &recent[i]);
    let awaiting = |u: &MessageRow| Activity::AwaitingReply {
        message_id: u.id.clone(),
        sent_at: u.info.time.created.unwrap_or(u.time_created),
    };
    let Some(assistant) = assistant else {
        return newest_user.map_or(Activity::Empty, |u| awaiting(&recent[u]));
    };
    let info = &assistant.info;
    let Some(completed_at) = info.time.completed else {
        return Activity::Busy;
    };
    // Newer: earlier in `recent`, which the source orders newest first.
    if let Some(u) = newest_user.filter(|&u| Some(u) < newest_assistant) {
        return awaiting(&recent[u]);
    }
    let parts: Vec<&PartRow> = assistant_parts
        .iter()
        .filter(|p| p.message_id == assistant.id)
        .collect();
    let ended = |error: Option<TurnError>| {
        Activity::Ended(TurnEnd {
            message_id: assistant.id.clone(),
            completed_at,
            error,
        })
    };
    if let Some(e) = &info.error {
        // The name only: the tracker persists the observation in the outbox's state tree, and a
        // provider's error message can quote a key or a prompt (#15). A record's
        // `error.message` comes from the snapshot, through `[privacy]` and redaction.
        return ended(Some(TurnError {
            name: e.name.clone(),
            message: String::new(),
        }));
    }
    if info.structured.is_some() {
        return ended(None);
    }
    let rejected = parts.iter().any(|p| {
        p.info.kind == "tool"
            && p.info
                .state
                .as_ref()
                .is_some_and(|s| s.status == "error" && s.rejected())
    });
    if rejected {
        return ended(None);
    }
    match info.finish.as_deref() {
        Some("tool-calls") => Activity::Busy,
        Some(_) => {
            let pending_tool = parts.iter().any(|p| {
                p.info.is_local_tool()
                    && !p
                        .info
                        .state
                        .as_ref()
                        .is_some_and(|s| s.status == "error" && s.interrupted())
            });
            if pending_tool {
                Activity::Busy
            } else {
                ended(None)
            }
        }
        None => {
            // The `!` shell command's message: settled once its tool is.
            let running = parts.iter().any(|p| {
                p.info.kind == "tool"
                    && !p
                        .info
                        .state
                        .as_ref()
                        .is_some_and(|s| s.status == "completed" || s.status == "error")
            });
            if running {
                Activity::Busy
            } else {
                ended(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::opencode::rows::{MessageInfo, PartInfo};

    fn msg(id: &str, json: &str) -> MessageRow {
        MessageRow {
            id: id.into(),
            time_created: 0,
            time_updated: 0,
            info: serde_json::from_str::<MessageInfo>(json).unwrap(),
        }
    }
    fn part(id: &str, message_id: &str, json: &str) -> PartRow {
        PartRow {
            id: id.into(),
            message_id: message_id.into(),
            time_updated: 0,
            info: serde_json::from_str::<PartInfo>(json).unwrap(),
        }
    }
    const USER: &str = r#"{"role":"user","time":{"created":1}}"#;

    #[test]
    fn a_stop_step_after_the_user_message_ends_the_turn() {
        let a = msg(
            "msg_2",
            r#"{"role":"assistant","time":{"created":2,"completed":3},"finish":"stop"}"#,
        );
        let recent = [a, msg("msg_1", USER)];
        assert!(
            matches!(classify(&recent, &[]), Activity::Ended(e) if e.error.is_none() && e.completed_at == 3)
        );
    }

    #[test]
    fn a_tool_calls_step_is_busy_unless_a_permission_was_rejected() {
        let a = msg(
            "msg_2",
            r#"{"role":"assistant","time":{"created":2,"completed":3},"finish":"tool-calls"}"#,
        );
        let ok = part(
            "prt_1",
            "msg_2",
            r#"{"type":"tool","tool":"bash","state":{"status":"completed"}}"#,
        );
        assert_eq!(
            classify(&[a.clone(), msg("msg_1", USER)], &[ok]),
            Activity::Busy
        );
        let rejected = part(
            "prt_1",
            "msg_2",
            r#"{"type":"tool","tool":"bash","state":{"status":"error","error":"The user rejected permission to use this specific tool call."}}"#,
        );
        assert!(matches!(
            classify(&[a, msg("msg_1", USER)], &[rejected]),
            Activity::Ended(_)
        ));
    }

    #[test]
    fn an_error_ends_the_turn_with_its_name_and_no_message() {
        let a = msg(
            "msg_2",
            r#"{"role":"assistant","time":{"created":2,"completed":3},"error":{"name":"MessageAbortedError","data":{"message":"Aborted"}}}"#,
        );
        match classify(&[a, msg("msg_1", USER)], &[]) {
            Activity::Ended(e) => assert_eq!(
                e.error,
                Some(TurnError {
                    name: "MessageAbortedError".into(),
                    message: String::new()
                })
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_incomplete_assistant_is_busy_and_an_unanswered_prompt_awaits_a_reply() {
        let a = msg("msg_2", r#"{"role":"assistant","time":{"created":2}}"#);
        assert_eq!(
            classify(&[a.clone(), msg("msg_1", USER)], &[]),
            Activity::Busy
        );
        // A prompt queued while the step runs: still busy.
        assert_eq!(classify(&[msg("msg_3", USER), a], &[]), Activity::Busy);
        let done = msg(
            "msg_2",
            r#"{"role":"assistant","time":{"created":2,"completed":3},"finish":"stop"}"#,
        );
        let prompt = msg("msg_3", r#"{"role":"user","time":{"created":7}}"#);
        let awaiting = Activity::AwaitingReply {
            message_id: "msg_3".into(),
            sent_at: 7,
        };
        assert_eq!(classify(&[prompt.clone(), done], &[]), awaiting);
        assert_eq!(classify(&[prompt], &[]), awaiting);
        assert_eq!(classify(&[], &[]), Activity::Empty);
    }

    #[test]
    fn a_shell_command_ends_the_turn_once_its_tool_settled() {
        // What `POST /session/:id/shell` (the TUI's `!`) writes, as in the harness's `shell` job.
        let shell = msg(
            "msg_4",
            r#"{"role":"assistant","time":{"created":4,"completed":5},"agent":"build","mode":"build"}"#,
        );
        let user = msg("msg_3", USER);
        let bash = |status: &str| {
            part(
                "prt_1",
                "msg_4",
                &format!(r#"{{"type":"tool","tool":"bash","state":{{"status":"{status}"}}}}"#),
            )
        };
        // (tool status, ended)
        for (status, ends) in [
            ("completed", true),
            ("error", true),
            ("running", false),
            ("pending", false),
        ] {
            let got = classify(&[shell.clone(), user.clone()], &[bash(status)]);
            assert_eq!(
                matches!(&got, Activity::Ended(e) if e.message_id == "msg_4" && e.completed_at == 5 && e.error.is_none()),
                ends,
                "{status}: {got:?}"
            );
        }
    }

    #[test]
    fn a_stop_step_with_a_pending_local_tool_is_busy_but_provider_tools_do_not_count() {
        let a = msg(
            "msg_2",
            r#"{"role":"assistant","time":{"created":2,"completed":3},"finish":"stop"}"#,
        );
        let local = part(
            "prt_1",
            "msg_2",
            r#"{"type":"tool","tool":"bash","state":{"status":"running"}}"#,
        );
        assert_eq!(
            classify(&[a.clone(), msg("msg_1", USER)], &[local]),
            Activity::Busy
        );
        let provider = part(
            "prt_1",
            "msg_2",
            r#"{"type":"tool","tool":"web","metadata":{"providerExecuted":true},"state":{"status":"completed"}}"#,
        );
        assert!(matches!(
            classify(&[a, msg("msg_1", USER)], &[provider]),
            Activity::Ended(_)
        ));
    }
}
