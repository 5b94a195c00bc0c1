//! Replay: OpenCode's own event log of the fixture run (`events.jsonl`) is replayed into a fresh
//! database — every durable `sync` event (`session.created/updated/deleted`, `message.updated`,
//! `message.part.updated`) becomes the row write OpenCode's projector made, `todo.updated`
//! replaces the todo rows, and the out-of-band `opencode session delete` of c03 deletes its rows
//! at the time the harness ran it. The daemon's tracker polls that database every 100 ms of
//! virtual time through its real read-only connection.
//!
//! The exports it decides are compared, session by session, with the moments OpenCode published
//! (`transitions.json`): each idle episode (`session.idle`, with `session.error` when the episode
//! had one), each archive and each `session.deleted` must give exactly the exports the rules
//! say — one per episode after the debounce window, none for an idle with open todos, merged
//! when the next moment falls inside the window — and nothing else.

use std::collections::BTreeMap;

use opencode_telemetry::daemon::pass::{pass, PassOptions};
use opencode_telemetry::export::{ExportContext, ExportOptions};
use opencode_telemetry::source::opencode::OpenCodeSource;
use opencode_telemetry::track::{Mode, Rules, Tracker, Trigger as Event};
use rusqlite::{params, Connection};
use serde_json::Value;

use crate::support::gen_db::GenDb;
use crate::support::*;

/// One write OpenCode made, at its receive time (ms).
enum Write {
    Sync(Value),
    Todos {
        session_id: String,
        todos: Vec<Value>,
    },
    DeleteSession(String),
}

fn load_writes() -> Vec<(i64, Write)> {
    let mut writes = Vec::new();
    let text = std::fs::read_to_string(fixture_dir().join("events.jsonl")).unwrap();
    for line in text.lines() {
        let e: Value = serde_json::from_str(line).unwrap();
        let Some(payload) = e.get("payload") else {
            continue;
        };
        let ts = (e["recv_ts"].as_f64().unwrap() * 1000.0) as i64;
        match payload["type"].as_str().unwrap() {
            "sync" => writes.push((ts, Write::Sync(payload["syncEvent"].clone()))),
            "todo.updated" => writes.push((
                ts,
                Write::Todos {
                    session_id: payload["properties"]["sessionID"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                    todos: payload["properties"]["todos"].as_array().unwrap().clone(),
                },
            )),
            _ => {}
        }
    }
    // c03 was deleted by a separate `opencode session delete` process: no event anywhere.
    let cli = std::fs::read_to_string(fixture_dir().join("cli_events.jsonl")).unwrap();
    for line in cli.lines() {
        let e: Value = serde_json::from_str(line).unwrap();
        if e.get("harness").and_then(Value::as_str) == Some("session_delete") {
            let ts = (e["ts"].as_f64().unwrap() * 1000.0) as i64;
            writes.push((
                ts,
                Write::DeleteSession(e["sessionID"].as_str().unwrap().to_string()),
            ));
        }
    }
    writes.sort_by_key(|(ts, _)| *ts);
    writes
}

fn strip(v: &Value, keys: &[&str]) -> String {
    let mut v = v.clone();
    for k in keys {
        v.as_object_mut().unwrap().remove(*k);
    }
    v.to_string()
}

fn apply(conn: &Connection, ts: i64, write: &Write) {
    let tx = conn.unchecked_transaction().unwrap();
    match write {
        Write::Sync(ev) => {
            let kind = ev["type"].as_str().unwrap();
            let data = &ev["data"];
            let sid = ev["aggregateID"].as_str().unwrap();
            match kind {
                "session.created.1" | "session.updated.1" => {
                    let i = &data["info"];
                    let t = &i["tokens"];
                    tx.execute(
                        "INSERT INTO session (id, project_id, parent_id, slug, directory, path, title, version, \
                         cost, tokens_input, tokens_output, tokens_reasoning, tokens_cache_read, tokens_cache_write, \
                         agent, model, time_created, time_updated, time_archived, summary_additions, summary_deletions, summary_files) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22) \
                         ON CONFLICT(id) DO UPDATE SET title = excluded.title, cost = excluded.cost, \
                         tokens_input = excluded.tokens_input, tokens_output = excluded.tokens_output, \
                         tokens_reasoning = excluded.tokens_reasoning, tokens_cache_read = excluded.tokens_cache_read, \
                         tokens_cache_write = excluded.tokens_cache_write, agent = excluded.agent, model = excluded.model, \
                         time_updated = excluded.time_updated, time_archived = excluded.time_archived, \
                         summary_additions = excluded.summary_additions, summary_deletions = excluded.summary_deletions, \
                         summary_files = excluded.summary_files",
                        params![
                            i["id"].as_str(),
                            i["projectID"].as_str(),
                            i["parentID"].as_str(),
                            i["slug"].as_str(),
                            i["directory"].as_str(),
                            i["path"].as_str(),
                            i["title"].as_str(),
                            i["version"].as_str(),
                            i["cost"].as_f64().unwrap_or(0.0),
                            t["input"].as_i64().unwrap_or(0),
                            t["output"].as_i64().unwrap_or(0),
                            t["reasoning"].as_i64().unwrap_or(0),
                            t["cache"]["read"].as_i64().unwrap_or(0),
                            t["cache"]["write"].as_i64().unwrap_or(0),
                            i["agent"].as_str(),
                            i.get("model").map(|m| m.to_string()),
                            i["time"]["created"].as_i64(),
                            i["time"]["updated"].as_i64(),
                            i["time"]["archived"].as_i64(),
                            i["summary"]["additions"].as_i64(),
                            i["summary"]["deletions"].as_i64(),
                            i["summary"]["files"].as_i64(),
                        ],
                    )
                    .unwrap();
                }
                "session.deleted.1" => {
                    tx.execute("DELETE FROM session WHERE id = ?1", [sid])
                        .unwrap();
                    tx.execute("DELETE FROM event_sequence WHERE aggregate_id = ?1", [sid])
                        .unwrap();
                }
                "message.updated.1" => {
                    let i = &data["info"];
                    tx.execute(
                        "INSERT INTO message (id, session_id, time_created, time_updated, data) VALUES (?1, ?2, ?3, ?4, ?5) \
                         ON CONFLICT(id) DO UPDATE SET data = excluded.data, time_updated = excluded.time_updated",
                        params![i["id"].as_str(), sid, i["time"]["created"].as_i64().unwrap_or(ts), ts, strip(i, &["id", "sessionID"])],
                    )
                    .unwrap();
                }
                "message.part.updated.1" => {
                    let p = &data["part"];
                    tx.execute(
                        "INSERT INTO part (id, message_id, session_id, time_created, time_updated, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                         ON CONFLICT(id) DO UPDATE SET data = excluded.data, time_updated = excluded.time_updated",
                        params![
                            p["id"].as_str(),
                            p["messageID"].as_str(),
                            sid,
                            data["time"].as_i64().unwrap_or(ts),
                            ts,
                            strip(p, &["id", "sessionID", "messageID"])
                        ],
                    )
                    .unwrap();
                }
                other => panic!("unexpected sync event {other}"),
            }
            if kind != "session.deleted.1" {
                // The event log, as OpenCode's projector appends it in the same transaction
                // (the deletion's own event goes with the session's others, by cascade).
                tx.execute(
                    "INSERT INTO event_sequence (aggregate_id, seq) VALUES (?1, ?2) \
                     ON CONFLICT(aggregate_id) DO UPDATE SET seq = excluded.seq",
                    params![sid, ev["seq"].as_i64().unwrap()],
                )
                .unwrap();
                tx.execute(
                    "INSERT INTO event (id, aggregate_id, seq, type, data) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        ev["id"].as_str().unwrap(),
                        sid,
                        ev["seq"].as_i64().unwrap(),
                        kind,
                        data.to_string()
                    ],
                )
                .unwrap();
            }
        }
        Write::Todos { session_id, todos } => {
            tx.execute("DELETE FROM todo WHERE session_id = ?1", [session_id])
                .unwrap();
            for (pos, t) in todos.iter().enumerate() {
                tx.execute(
                    "INSERT INTO todo (session_id, content, status, priority, position, time_created, time_updated) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                    params![session_id, t["content"].as_str(), t["status"].as_str(), t["priority"].as_str(), pos as i64, ts],
                )
                .unwrap();
            }
        }
        Write::DeleteSession(id) => {
            tx.execute("DELETE FROM session WHERE parent_id = ?1", [id])
                .unwrap();
            tx.execute("DELETE FROM session WHERE id = ?1", [id])
                .unwrap();
            tx.execute("DELETE FROM event_sequence WHERE aggregate_id = ?1", [id])
                .unwrap();
        }
    }
    tx.commit().unwrap();
}

/// An export the rules say the ground truth calls for: (event, error name, ground-truth ms).
type Expected = (Event, Option<String>, i64);

/// Applies the export rules to OpenCode's published moments of one session.
fn expected_exports(
    transitions: &[Value],
    deleted_at: Option<i64>,
    debounce_ms: i64,
) -> Vec<Expected> {
    // Collapse into moments: idle episodes (first idle after a busy), archives, deletion.
    enum Moment {
        Idle {
            at: i64,
            error: Option<String>,
            todos_open: bool,
        },
        Archived {
            at: i64,
        },
        Deleted {
            at: i64,
        },
    }
    let mut moments = Vec::new();
    let mut in_idle = false;
    let mut pending_error: Option<String> = None;
    let mut todos_open = false;
    for t in transitions {
        let at = (t["ts"].as_f64().unwrap() * 1000.0) as i64;
        match t["event"].as_str().unwrap() {
            "session.status" if t["status"] == "busy" || t["status"] == "retry" => {
                in_idle = false;
                pending_error = None;
            }
            "session.error" => pending_error = t["error"].as_str().map(str::to_string),
            "todo.updated" => {
                todos_open = t["todos"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s != "completed" && s != "cancelled");
            }
            "session.idle" if !in_idle => {
                in_idle = true;
                moments.push(Moment::Idle {
                    at,
                    error: pending_error.clone(),
                    todos_open,
                });
            }
            "session.archived" => moments.push(Moment::Archived { at }),
            "session.deleted" => moments.push(Moment::Deleted { at }),
            _ => {}
        }
    }
    if let Some(at) = deleted_at {
        moments.push(Moment::Deleted { at });
    }
    // Walk the moments with the debounce window.
    let mut out: Vec<Expected> = Vec::new();
    let mut pending: Option<(i64, Option<String>)> = None; // an idle export waiting for its window
    let mut exported_once = false;
    let flush = |pending: &mut Option<(i64, Option<String>)>,
                 out: &mut Vec<Expected>,
                 until: i64,
                 exported: &mut bool| {
        if let Some((at, err)) = pending.take() {
            if at + debounce_ms <= until {
                let ev = if err.is_some() {
                    Event::Error
                } else {
                    Event::Idle
                };
                out.push((ev, err, at));
                *exported = true;
            }
        }
    };
    for m in moments {
        match m {
            Moment::Idle {
                at,
                error,
                todos_open,
            } => {
                flush(&mut pending, &mut out, at, &mut exported_once);
                if !todos_open {
                    pending = Some((at, error));
                }
            }
            Moment::Archived { at } => {
                // Inside a pending window the export just carries archivedAt; after an export,
                // archiving exports again.
                if pending.as_ref().is_some_and(|(p, _)| p + debounce_ms <= at) {
                    flush(&mut pending, &mut out, at, &mut exported_once);
                }
                if pending.is_none() && exported_once {
                    let (ev, err, _) = out.last().cloned().unwrap();
                    out.push((ev, err, at));
                }
            }
            Moment::Deleted { at } => {
                flush(&mut pending, &mut out, at, &mut exported_once);
                out.push((Event::Deleted, None, at));
            }
        }
    }
    flush(&mut pending, &mut out, i64::MAX, &mut exported_once);
    out
}

fn replay(debounce_ms: i64) {
    let scratch = Scratch::new();
    let db_path = scratch.path("opencode.db");
    // An empty database with OpenCode's schema, projects and migrations, written like OpenCode
    // does (WAL, foreign keys on so that deletes cascade).
    let generated = GenDb::create(&db_path, 0);
    let writer = generated.conn();
    writer.execute_batch("PRAGMA foreign_keys = ON;").unwrap();
    let writes = load_writes();
    let transitions: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir().join("transitions.json")).unwrap(),
    )
    .unwrap();

    let rules = Rules {
        debounce_ms,
        final_after_ms: i64::MAX / 4,
        stale_after_ms: i64::MAX / 4,
        skip_subagent_sessions: true,
        no_reply_after_ms: opencode_telemetry::track::rules::NO_REPLY_AFTER_MS,
    };
    let mut tracker = Tracker::new(rules);
    let ctx = ExportContext {
        device_id: "0".repeat(32),
        hostname: "replay".into(),
        daemon_version: "test".into(),
        exported_at: 0,
        options: ExportOptions {
            include_todos: true,
            include_messages: false,
            max_message_chars: 100,
        },
        privacy: opencode_telemetry::export::Privacy::of_level(
            opencode_telemetry::export::privacy::Level::Content,
            opencode_telemetry::export::PathKey::new([0; 32]),
        ),
    };
    let mut source = OpenCodeSource::new(&db_path, std::time::Duration::from_secs(5));
    // The outbox's `state` tree, as the daemon commits it.
    let mut state: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let start = writes.first().unwrap().0;
    let end = writes.last().unwrap().0 + debounce_ms + 1000;
    let poll = 100;
    let mut next = 0;
    let mut got: BTreeMap<String, Vec<(Event, Option<String>, i64)>> = BTreeMap::new();
    let mut now = start;
    while now <= end {
        while next < writes.len() && writes[next].0 <= now {
            apply(writer, writes[next].0, &writes[next].1);
            next += 1;
        }
        let out = pass(
            &mut source,
            &mut tracker,
            &ctx,
            || now,
            PassOptions {
                chunk_sessions: opencode_telemetry::daemon::pass::CHUNK_SESSIONS,
                mode: Mode::Live,
                budget_bytes: u64::MAX,
                store: &state,
                progress: None,
                held_deletions: false,
            },
        )
        .unwrap();
        state.extend(out.state_puts);
        for k in &out.state_removes {
            state.remove(k);
        }
        for e in out.exported {
            got.entry(e.record.session_id.clone()).or_default().push((
                e.trigger,
                e.record.error.as_ref().map(|x| x.name.clone()),
                now,
            ));
        }
        now += poll;
    }

    let mut deleted_at: BTreeMap<String, i64> = BTreeMap::new();
    for (ts, w) in &writes {
        if let Write::DeleteSession(id) = w {
            deleted_at.insert(id.clone(), *ts);
        }
    }
    let mut checked = 0;
    for (sid, t) in transitions.as_object().unwrap() {
        if !t["parent_id"].is_null() {
            assert!(!got.contains_key(sid), "child {sid} exported on its own");
            continue;
        }
        let expected = expected_exports(
            t["transitions"].as_array().unwrap(),
            deleted_at.get(sid).copied(),
            debounce_ms,
        );
        let actual = got.remove(sid).unwrap_or_default();
        let kinds = |v: &[(Event, Option<String>, i64)]| {
            v.iter()
                .map(|(e, n, _)| (*e, n.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            kinds(&actual),
            kinds(&expected),
            "{sid} ({}) debounce {debounce_ms}",
            t["job"]
        );
        // Timing: an idle/error export lands one debounce window (plus at most one poll and the
        // DB-to-bus lag) after OpenCode published the moment; a deletion within one poll.
        for ((event, _, at), (_, _, gt)) in actual.iter().zip(&expected) {
            let lag = at - gt;
            let window = if *event == Event::Deleted {
                0
            } else {
                debounce_ms
            };
            assert!(
                lag >= window - 500 && lag <= window + poll + 500,
                "{sid}: {event:?} exported {lag} ms after the ground truth (window {window})"
            );
        }
        checked += 1;
    }
    assert!(
        got.is_empty(),
        "exports for sessions OpenCode never announced: {got:?}"
    );
    assert_eq!(checked, 27);
}

#[test]
fn the_tracker_agrees_with_opencodes_event_log_at_the_default_debounce() {
    replay(5000);
}

#[test]
fn with_a_short_debounce_every_idle_episode_is_exported_separately() {
    replay(300);
}

#[test]
fn the_expectation_model_merges_episodes_inside_the_window() {
    // Guards the test's own oracle: s05 has two idle episodes 0.7 s apart.
    let transitions: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir().join("transitions.json")).unwrap(),
    )
    .unwrap();
    let s05 = transitions["ses_e035b5eb6ffeY9JRHZGSMoNjAB"]["transitions"]
        .as_array()
        .unwrap();
    assert_eq!(expected_exports(s05, None, 5000).len(), 1);
    assert_eq!(expected_exports(s05, None, 300).len(), 2);
    let s04 = transitions["ses_e035b604cffemvAyVYe6L4d6bS"]["transitions"]
        .as_array()
        .unwrap();
    let e = expected_exports(s04, None, 5000);
    assert_eq!(
        e.iter().map(|x| x.0).collect::<Vec<_>>(),
        vec![Event::Deleted]
    );
    let s00 = transitions["ses_e035b7387ffeXGxgAz2ewC5tbB"]["transitions"]
        .as_array()
        .unwrap();
    assert_eq!(
        expected_exports(s00, None, 5000).len(),
        1,
        "archived inside the window"
    );
    assert_eq!(
        expected_exports(s00, None, 300).len(),
        2,
        "archived after the export"
    );
    let e = expected_exports(s04, None, 300);
    assert_eq!(
        e.iter().map(|x| x.0).collect::<Vec<_>>(),
        vec![Event::Idle, Event::Deleted]
    );
}
