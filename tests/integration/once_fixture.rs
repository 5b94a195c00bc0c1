//! `once` on the real OpenCode 1.18.33 database: every record value is checked against SQL
//! written here (json_extract over the raw rows), against OpenCode's own session usage columns,
//! and against the harness manifest and OpenCode's event log.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::support::*;

/// The `session` columns the record is checked against.
struct SessionCols {
    project_id: String,
    directory: String,
    title: String,
    version: String,
    created: i64,
    archived: Option<i64>,
    cost: f64,
    tokens: [i64; 5],
}

fn by_id(records: Vec<Value>) -> BTreeMap<String, Value> {
    records
        .into_iter()
        .map(|r| (r["sessionId"].as_str().unwrap().to_string(), r))
        .collect()
}

fn count(conn: &rusqlite::Connection, sql: &str, id: &str) -> u64 {
    conn.query_row(sql, [id], |r| r.get::<_, i64>(0)).unwrap() as u64
}

#[test]
fn once_exports_every_top_level_session_with_values_equal_to_the_database() {
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();
    // Everything leaves, so every value can be compared with the database (and none of the
    // fixture's real texts is mistaken for a secret: titles come out as stored).
    let config = scratch.write_config("[privacy]\nlevel = \"content\"\n");
    let out = run_once(&scratch, &config, &db);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let records = by_id(read_ndjson(&scratch.local_sink()));
    let conn = sql(&db);

    // One record per top-level session; children are not records of their own by default.
    let roots = root_sessions(&conn);
    assert_eq!(roots.len(), 25);
    assert_eq!(records.keys().cloned().collect::<BTreeSet<_>>(), roots);
    // …and one printed line per session: id, end reason, messages, todos, cost, title.
    for id in &roots {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(id.as_str()))
            .unwrap_or_else(|| panic!("no line for {id}:\n{stdout}"));
        let r = &records[id];
        assert!(line.contains(r["endReason"].as_str().unwrap()), "{line}");
        assert!(
            line.contains(&format!("msgs {:>3}", r["messageCount"].as_u64().unwrap())),
            "{line}"
        );
        assert!(line.contains(r["title"].as_str().unwrap()), "{line}");
    }

    let hostname = hostname_of_this_machine();
    for (id, r) in &records {
        let row = conn
            .query_row(
                "SELECT project_id, directory, title, version, time_created, time_archived, cost, \
                 tokens_input, tokens_output, tokens_reasoning, tokens_cache_read, tokens_cache_write \
                 FROM session WHERE id = ?1",
                [id],
                |r| {
                    Ok(SessionCols {
                        project_id: r.get(0)?,
                        directory: r.get(1)?,
                        title: r.get(2)?,
                        version: r.get(3)?,
                        created: r.get(4)?,
                        archived: r.get(5)?,
                        cost: r.get(6)?,
                        tokens: [r.get(7)?, r.get(8)?, r.get(9)?, r.get(10)?, r.get(11)?],
                    })
                },
            )
            .unwrap();
        let SessionCols {
            project_id,
            directory,
            title,
            version,
            created,
            archived,
            cost,
            tokens: [t_in, t_out, t_reason, t_cr, t_cw],
        } = row;
        assert_eq!(r["projectId"], project_id.as_str());
        assert_eq!(r["projectDirectory"], directory.as_str());
        assert_eq!(r["title"], title.as_str());
        assert_eq!(r["opencodeVersion"], version.as_str());
        assert_eq!(r["opencodeVersion"], "1.18.33");
        assert_eq!(r["createdAt"].as_i64(), Some(created));
        assert_eq!(r["archivedAt"].as_i64(), archived);
        assert_eq!(r["hostname"], hostname.as_str());
        assert_eq!(r["daemonVersion"], env!("CARGO_PKG_VERSION"));
        let device = r["deviceId"].as_str().unwrap();
        assert!(
            device.len() == 32 && device.chars().all(|c| c.is_ascii_hexdigit()),
            "{device}"
        );
        let machine_id = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
        assert!(machine_id.trim().is_empty() || !device.contains(machine_id.trim()));

        // Messages by role.
        assert_eq!(
            r["messageCount"],
            count(
                &conn,
                "SELECT COUNT(*) FROM message WHERE session_id = ?1",
                id
            )
        );
        assert_eq!(
            r["userMessageCount"],
            count(&conn, "SELECT COUNT(*) FROM message WHERE session_id = ?1 AND json_extract(data, '$.role') = 'user'", id)
        );
        assert_eq!(
            r["assistantMessageCount"],
            count(&conn, "SELECT COUNT(*) FROM message WHERE session_id = ?1 AND json_extract(data, '$.role') = 'assistant'", id)
        );

        // Todos by status.
        let todo = |status: &str| -> u64 {
            conn.query_row(
                "SELECT COUNT(*) FROM todo WHERE session_id = ?1 AND status = ?2",
                [id.as_str(), status],
                |r| r.get::<_, i64>(0),
            )
            .unwrap() as u64
        };
        let stats = &r["todoStats"];
        assert_eq!(
            stats["total"],
            count(&conn, "SELECT COUNT(*) FROM todo WHERE session_id = ?1", id)
        );
        assert_eq!(stats["completed"], todo("completed"));
        assert_eq!(stats["pending"], todo("pending"));
        assert_eq!(stats["inProgress"], todo("in_progress"));
        assert_eq!(stats["cancelled"], todo("cancelled"));
        assert_eq!(
            r["todos"].as_array().unwrap().len() as u64,
            stats["total"].as_u64().unwrap()
        );

        // Cost and tokens equal OpenCode's own session usage columns (≥ 1.14.49).
        assert!(
            (r["cost"].as_f64().unwrap() - cost).abs() < 1e-9,
            "{id}: {} vs {cost}",
            r["cost"]
        );
        let tokens = &r["tokens"];
        assert_eq!(tokens["input"].as_i64(), Some(t_in));
        assert_eq!(tokens["output"].as_i64(), Some(t_out));
        assert_eq!(tokens["reasoning"].as_i64(), Some(t_reason));
        assert_eq!(tokens["cacheRead"].as_i64(), Some(t_cr));
        assert_eq!(tokens["cacheWrite"].as_i64(), Some(t_cw));
        let model_cost: f64 = r["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["cost"].as_f64().unwrap())
            .sum();
        assert!((model_cost - cost).abs() < 1e-9);
        let model_messages: u64 = r["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["messages"].as_u64().unwrap())
            .sum();
        assert_eq!(model_messages, r["assistantMessageCount"].as_u64().unwrap());

        // Tool calls per tool name and their errors.
        let mut stmt = conn
            .prepare(
                "SELECT json_extract(data, '$.tool'), COUNT(*), \
                 SUM(json_extract(data, '$.state.status') = 'error') FROM part \
                 WHERE session_id = ?1 AND json_extract(data, '$.type') = 'tool' GROUP BY 1",
            )
            .unwrap();
        let expected: BTreeMap<String, (u64, u64)> = stmt
            .query_map([id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    (r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64),
                ))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let got: BTreeMap<String, (u64, u64)> = r["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["name"].as_str().unwrap().to_string(),
                    (t["calls"].as_u64().unwrap(), t["errors"].as_u64().unwrap()),
                )
            })
            .collect();
        assert_eq!(got, expected, "{id}");

        // Lines changed in the working tree: the per-turn diffs OpenCode stores on user messages.
        let (adds, dels): (i64, i64) = conn
            .query_row(
                "SELECT COALESCE(SUM(json_extract(d.value, '$.additions')), 0), \
                 COALESCE(SUM(json_extract(d.value, '$.deletions')), 0) \
                 FROM message m, json_each(m.data, '$.summary.diffs') d WHERE m.session_id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(
            r["worktreeChanges"]["additions"].as_i64(),
            Some(adds),
            "{id}"
        );
        assert_eq!(
            r["worktreeChanges"]["deletions"].as_i64(),
            Some(dels),
            "{id}"
        );

        // Agents used.
        let agents: BTreeSet<String> = conn
            .prepare("SELECT DISTINCT json_extract(data, '$.agent') FROM message WHERE session_id = ?1 AND json_extract(data, '$.agent') IS NOT NULL")
            .unwrap()
            .query_map([id], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let got: BTreeSet<String> = r["agentsUsed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        assert_eq!(got, agents, "{id}");

        // End reason and error: the newest assistant message's error.
        let last_error: Option<String> = conn
            .query_row(
                "SELECT json_extract(data, '$.error.name') FROM message WHERE session_id = ?1 \
                 AND json_extract(data, '$.role') = 'assistant' ORDER BY time_created DESC, id DESC LIMIT 1",
                [id],
                |r| r.get(0),
            )
            .unwrap();
        match &last_error {
            Some(name) => {
                assert_eq!(r["endReason"], "error", "{id}");
                assert_eq!(r["error"]["name"], name.as_str());
            }
            None => {
                assert_eq!(r["endReason"], "idle", "{id}");
                assert!(r.get("error").is_none());
            }
        }

        // Children: listed with the parent ids the database holds.
        let children: Vec<String> = conn
            .prepare("SELECT id FROM session WHERE parent_id = ?1")
            .unwrap()
            .query_map([id], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let listed: Vec<String> = r
            .get("children")
            .and_then(Value::as_array)
            .map(|c| {
                c.iter()
                    .map(|c| c["sessionId"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(listed, children, "{id}");
        if !children.is_empty() {
            let child_msgs = count(&conn, "SELECT COUNT(*) FROM message WHERE session_id IN (SELECT id FROM session WHERE parent_id = ?1)", id);
            assert_eq!(
                r["rollup"]["messageCount"].as_u64().unwrap(),
                r["messageCount"].as_u64().unwrap() + child_msgs
            );
            assert_eq!(
                r["rollup"]["sessions"].as_u64().unwrap(),
                1 + children.len() as u64
            );
        }
    }

    // The error sessions named by the harness manifest, with the error names OpenCode published
    // on its bus (session.error in events → transitions.json).
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir().join("manifest.json")).unwrap(),
    )
    .unwrap();
    let transitions: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir().join("transitions.json")).unwrap(),
    )
    .unwrap();
    let mut error_sessions = 0;
    for job in manifest["jobs"].as_array().unwrap() {
        let kind = job["kind"].as_str().unwrap();
        if !["error", "error500", "midstream_error", "abort"].contains(&kind) {
            continue;
        }
        let sid = job["session_id"].as_str().unwrap();
        let published: Vec<&str> = transitions[sid]["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["event"] == "session.error")
            .map(|t| t["error"].as_str().unwrap())
            .collect();
        assert_eq!(records[sid]["endReason"], "error", "{sid} ({kind})");
        assert_eq!(
            records[sid]["error"]["name"].as_str(),
            published.last().copied(),
            "{sid}"
        );
        error_sessions += 1;
    }
    assert_eq!(error_sessions, 5);
}

#[test]
fn with_subagent_sessions_included_children_are_records_with_their_parent_ids() {
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();
    let config = scratch.write_config("[export]\nskip_subagent_sessions = false\n");
    run_once(&scratch, &config, &db);
    let records = by_id(read_ndjson(&scratch.local_sink()));
    let conn = sql(&db);
    assert_eq!(
        records.len() as u64,
        count(&conn, "SELECT COUNT(*) FROM session WHERE id <> ?1", "")
    );
    let mut children = 0;
    for (id, r) in &records {
        let parent: Option<String> = conn
            .query_row("SELECT parent_id FROM session WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(r["parentSessionId"].as_str(), parent.as_deref(), "{id}");
        children += usize::from(parent.is_some());
    }
    assert_eq!(children, 3);
}

#[test]
fn once_twice_writes_nothing_new_and_the_outbox_ends_empty() {
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();
    let config = scratch.write_config("");
    run_once(&scratch, &config, &db);
    let second = run_once(&scratch, &config, &db);
    // The second pass resumes the tracker's state: every session was exported for its end of
    // turn already, so nothing is printed, queued or delivered again.
    assert_eq!(read_ndjson(&scratch.local_sink()).len(), 25);
    assert!(
        !String::from_utf8_lossy(&second.stdout).contains("ses_"),
        "{}",
        String::from_utf8_lossy(&second.stdout)
    );
    let status = run(command(&scratch)
        .arg("--config")
        .arg(&config)
        .arg("--db")
        .arg(&db)
        .arg("status"));
    assert!(status.status.success());
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("pending:         0") || text.contains("pending: 0"),
        "{text}"
    );
}

fn hostname_of_this_machine() -> String {
    let out = std::process::Command::new("hostname").output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => std::fs::read_to_string("/etc/hostname")
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}
