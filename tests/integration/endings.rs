//! Every shape OpenCode treats as the end of a turn is seen as one: `once` on a database
//! written by real OpenCode 1.18.33 with one session per harness kind
//! (`tests/fixtures/opencode-1.18.33-kinds`) exports every top-level session, each with the
//! ending OpenCode itself last announced in its event log (`session.idle` / `session.error`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::support::*;

/// The last `session.idle` or `session.error` OpenCode published per session, from its log.
fn last_announced_endings() -> BTreeMap<String, String> {
    let mut last = BTreeMap::new();
    let log = std::fs::read_to_string(kinds_dir().join("events.jsonl")).unwrap();
    for line in log.lines() {
        let e: Value = serde_json::from_str(line).unwrap();
        let ty = e["payload"]["type"].as_str().unwrap_or("");
        if ty == "session.idle" || ty == "session.error" {
            if let Some(id) = e["payload"]["properties"]["sessionID"].as_str() {
                // The record's `endReason` names it without the `session.` prefix.
                last.insert(
                    id.to_string(),
                    ty.trim_start_matches("session.").to_string(),
                );
            }
        }
    }
    last
}

/// The session id of the harness job of `kind`.
fn job_session(kind: &str) -> String {
    kinds_job(kind)["session_id"].as_str().unwrap().to_string()
}

#[test]
fn once_sees_every_ending_including_shell_commands_and_no_reply_prompts() {
    let scratch = Scratch::new();
    let db = scratch.path("oc/opencode.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    std::fs::copy(kinds_dir().join("opencode.db"), &db).unwrap();
    // The fixture ages: a turn read as still running would be exported as stale (incomplete)
    // once it is an hour old. A stale timer of ten years keeps this test about endings.
    let config = scratch.write_config("[export]\nstale_after_secs = 315360000\n");
    let out = run_once(&scratch, &config, &db);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("not exported"),
        "every session of this database has ended:\n{stdout}"
    );
    let records: BTreeMap<String, Value> = read_ndjson(&scratch.local_sink())
        .into_iter()
        .map(|r| (r["sessionId"].as_str().unwrap().to_string(), r))
        .collect();
    let conn = sql(&db);
    let roots = root_sessions(&conn);
    assert_eq!(records.keys().cloned().collect::<BTreeSet<_>>(), roots);

    // Each ending equals the one OpenCode last announced, where it announced one (a fork's
    // copy never ran a turn of its own, so OpenCode published nothing for it).
    let announced = last_announced_endings();
    let mut compared = 0;
    for (id, record) in &records {
        assert!(
            !record["incomplete"].as_bool().unwrap_or(false),
            "{id} exported as incomplete"
        );
        if let Some(ending) = announced.get(id) {
            assert_eq!(record["endReason"], ending.as_str(), "{id}");
            compared += 1;
        }
    }
    assert!(
        compared >= 18,
        "only {compared} sessions had an announced ending"
    );

    // The two shapes that used to be read as busy, with every message counted.
    for kind in ["shell", "noreply"] {
        let id = job_session(kind);
        let r = &records[&id];
        assert_eq!(r["endReason"], "idle", "{kind}");
        let messages: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM message WHERE session_id = ?1",
                [&id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(r["messageCount"], messages, "{kind}");
    }
    // The noReply prompt is the session's newest message and has no answer.
    let noreply = job_session("noreply");
    let newest_role: String = conn
        .query_row(
            "SELECT json_extract(data, '$.role') FROM message WHERE session_id = ?1 \
             ORDER BY time_created DESC, id DESC LIMIT 1",
            [&noreply],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(newest_role, "user");
}
