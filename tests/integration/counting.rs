//! Every token and dollar counted once, on a database written by real OpenCode 1.18.33 with one
//! session per harness kind (`tests/fixtures/opencode-1.18.33-kinds`): `once` exports it to the
//! local sink and each figure is compared with independent SQL over the database (and, for the
//! fork and revert, with what the harness asked OpenCode to do, from its manifest).

use std::collections::BTreeMap;

use rusqlite::Connection;
use serde_json::Value;

use crate::support::*;

/// Every exported record by session id, from `once` on a copy of the kinds fixture, and a
/// read-only connection to that copy.
fn export_kinds(scratch: &Scratch) -> (BTreeMap<String, Value>, Connection) {
    let db = scratch.path("oc/opencode.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    std::fs::copy(kinds_dir().join("opencode.db"), &db).unwrap();
    let config = scratch.write_config("[export]\nstale_after_secs = 315360000\n");
    let out = run_once(scratch, &config, &db);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = read_ndjson(&scratch.local_sink())
        .into_iter()
        .map(|r| (r["sessionId"].as_str().unwrap().to_string(), r))
        .collect();
    (records, sql(&db))
}

fn f64_of(conn: &Connection, q: &str, id: &str) -> f64 {
    conn.query_row(q, [id], |r| r.get::<_, Option<f64>>(0))
        .unwrap()
        .unwrap_or(0.0)
}

fn u64_of(conn: &Connection, q: &str, id: &str) -> u64 {
    conn.query_row(q, [id], |r| r.get::<_, i64>(0)).unwrap() as u64
}

/// Messages a fork copied: created before the session itself.
const INHERITED_MESSAGES: &str =
    "SELECT COUNT(*) FROM message m JOIN session s ON s.id = m.session_id \
     WHERE s.id = ?1 AND m.time_created < s.time_created";
/// The cost of the steps of those messages.
const INHERITED_COST: &str = "SELECT SUM(json_extract(p.data, '$.cost')) FROM part p \
     JOIN message m ON m.id = p.message_id JOIN session s ON s.id = m.session_id \
     WHERE s.id = ?1 AND m.time_created < s.time_created \
       AND json_extract(p.data, '$.type') = 'step-finish'";

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn forks_name_their_source_and_carry_the_copied_prefix() {
    let scratch = Scratch::new();
    let (records, conn) = export_kinds(&scratch);
    let job = kinds_job("fork");
    let original = job["session_id"].as_str().unwrap();
    let forks = [
        job["fork_session_id"].as_str().unwrap(),
        job["full_fork_session_id"].as_str().unwrap(),
    ];
    for fork in forks {
        let r = &records[fork];
        assert_eq!(r["forkedFrom"], original, "{fork}");
        assert!(r.get("parentSessionId").is_none());
        let inherited = &r["inherited"];
        let n = u64_of(&conn, INHERITED_MESSAGES, fork);
        assert!(n > 0, "{fork} copied nothing?");
        assert_eq!(inherited["messageCount"], n, "{fork}");
        assert!(close(
            inherited["cost"].as_f64().unwrap(),
            f64_of(&conn, INHERITED_COST, fork)
        ));
        // The record's own figures stay as OpenCode stores them (the copies included).
        let stored = f64_of(&conn, "SELECT cost FROM session WHERE id = ?1", fork);
        assert!(close(r["cost"].as_f64().unwrap(), stored), "{fork}");
        let per_model: f64 = inherited["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["cost"].as_f64().unwrap())
            .sum();
        assert!(close(per_model, inherited["cost"].as_f64().unwrap()));
    }
    // The full fork copied every message of the original.
    assert_eq!(
        records[forks[1]]["inherited"]["messageCount"],
        records[original]["messageCount"]
    );
    // No other session is a fork.
    let others: Vec<&String> = records
        .iter()
        .filter(|(id, r)| {
            !forks.contains(&id.as_str())
                && (r.get("inherited").is_some() || r.get("forkedFrom").is_some())
        })
        .map(|(id, _)| id)
        .collect();
    assert!(others.is_empty(), "{others:?}");
}

#[test]
fn a_pending_revert_is_reported_and_a_cleaned_up_one_is_not() {
    let scratch = Scratch::new();
    let (records, conn) = export_kinds(&scratch);
    let reverted_id = kinds_job("revert")["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    // What the harness reverted to (its second prompt), as OpenCode stored it.
    let point: String = conn
        .query_row(
            "SELECT json_extract(revert, '$.messageID') FROM session WHERE id = ?1",
            [&reverted_id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(point, kinds_job("revert")["user_message_ids"][1]);
    let r = &records[&reverted_id]["reverted"];
    let hidden = u64_of(
        &conn,
        &format!("SELECT COUNT(*) FROM message WHERE session_id = ?1 AND id >= '{point}'"),
        &reverted_id,
    );
    assert!(hidden > 0);
    assert_eq!(r["messageCount"], hidden);
    let hidden_cost = f64_of(
        &conn,
        &format!(
            "SELECT SUM(json_extract(data, '$.cost')) FROM part WHERE session_id = ?1 \
             AND message_id >= '{point}' AND json_extract(data, '$.type') = 'step-finish'"
        ),
        &reverted_id,
    );
    assert!(hidden_cost > 0.0);
    assert!(close(r["cost"].as_f64().unwrap(), hidden_cost));
    // Still spent: the record's cost keeps the hidden turn.
    let stored = f64_of(
        &conn,
        "SELECT cost FROM session WHERE id = ?1",
        &reverted_id,
    );
    assert!(close(
        records[&reverted_id]["cost"].as_f64().unwrap(),
        stored
    ));
    // After the next prompt OpenCode deleted the hidden messages and cleared the revert.
    let cleaned = kinds_job("revert_cleanup")["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(records[&cleaned].get("reverted").is_none());
    let others = records
        .iter()
        .filter(|(id, r)| **id != reverted_id && r.get("reverted").is_some())
        .count();
    assert_eq!(others, 0);
}

/// Per (provider, model): (assistant messages, cost) over the step-finish parts of the given
/// sessions' messages, without the messages forks copied — by SQL alone.
fn spend_by_model(
    conn: &Connection,
    where_session: &str,
) -> BTreeMap<(String, String), (u64, f64)> {
    let q = format!(
        "SELECT json_extract(m.data, '$.providerID'), json_extract(m.data, '$.modelID'), \
                COUNT(DISTINCT m.id), \
                TOTAL(CASE WHEN json_extract(p.data, '$.type') = 'step-finish' \
                           THEN json_extract(p.data, '$.cost') END) \
         FROM message m JOIN session s ON s.id = m.session_id \
         LEFT JOIN part p ON p.message_id = m.id \
         WHERE json_extract(m.data, '$.role') = 'assistant' AND m.time_created >= s.time_created \
           AND ({where_session}) \
         GROUP BY 1, 2"
    );
    let mut stmt = conn.prepare(&q).unwrap();
    stmt.query_map([], |r| {
        Ok((
            (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
            (r.get::<_, i64>(2)? as u64, r.get::<_, f64>(3)?),
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// What a record counts in totals (the rule of `convex/convex/aggregates.ts`): its rollup (or
/// itself), minus what a fork inherited, per model.
fn counted_by_model(r: &Value) -> BTreeMap<(String, String), (u64, f64)> {
    let mut out: BTreeMap<(String, String), (i64, f64)> = BTreeMap::new();
    let mut add = |list: &Value, sign: i64| {
        for m in list.as_array().into_iter().flatten() {
            let e = out
                .entry((
                    m["providerId"].as_str().unwrap().to_string(),
                    m["modelId"].as_str().unwrap().to_string(),
                ))
                .or_default();
            e.0 += sign * m["messages"].as_i64().unwrap();
            e.1 += sign as f64 * m["cost"].as_f64().unwrap();
        }
    };
    match r.get("rollup") {
        Some(rollup) => add(&rollup["models"], 1),
        None => add(&r["models"], 1),
    }
    if let Some(i) = r.get("inherited") {
        add(&i["models"], -1);
    }
    out.into_iter()
        .filter(|(_, (n, _))| *n > 0)
        .map(|(k, (n, c))| (k, (n as u64, c)))
        .collect()
}

#[test]
fn totals_over_the_records_count_subagents_once_and_forks_once_per_model() {
    let scratch = Scratch::new();
    let (records, conn) = export_kinds(&scratch);
    // Every session of the database (subagents included), each message once: the copies a fork
    // made are spent in the original.
    let want = spend_by_model(&conn, "1");
    let mut got: BTreeMap<(String, String), (u64, f64)> = BTreeMap::new();
    for r in records.values() {
        for (k, (n, c)) in counted_by_model(r) {
            let e = got.entry(k).or_default();
            e.0 += n;
            e.1 += c;
        }
    }
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, (n, c)) in &want {
        assert_eq!(got[k].0, *n, "{k:?}");
        assert!(close(got[k].1, *c), "{k:?}: {} vs {c}", got[k].1);
    }
    // And in dollars: OpenCode's own session.cost over every session, minus the copies.
    let opencode_total: f64 = conn
        .query_row("SELECT SUM(cost) FROM session", [], |r| r.get(0))
        .unwrap();
    let copies: f64 = records
        .values()
        .filter_map(|r| r.get("inherited"))
        .map(|i| i["cost"].as_f64().unwrap())
        .sum();
    let counted: f64 = got.values().map(|(_, c)| c).sum();
    assert!(
        close(counted, opencode_total - copies),
        "{counted} vs {opencode_total} - {copies}"
    );
}

#[test]
fn a_parent_rolls_up_its_subagents_models_tools_and_skills() {
    let scratch = Scratch::new();
    let (records, conn) = export_kinds(&scratch);
    let parent = kinds_job("subagent_rich")["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = &records[&parent];
    let family = format!("s.id = '{parent}' OR s.parent_id = '{parent}'");
    let children = u64_of(
        &conn,
        "SELECT COUNT(*) FROM session WHERE parent_id = ?1",
        &parent,
    );
    assert!(children > 0);
    assert_eq!(r["rollup"]["sessions"], children + 1);
    // Per model: the parent's and its subagents' steps.
    let want = spend_by_model(&conn, &family);
    assert_eq!(counted_by_model(r).len(), want.len());
    for (k, (n, c)) in counted_by_model(r) {
        assert_eq!(n, want[&k].0, "{k:?}");
        assert!(close(c, want[&k].1), "{k:?}");
    }
    // Each child's own models travel in its summary.
    for c in r["children"].as_array().unwrap() {
        let id = c["sessionId"].as_str().unwrap();
        let want = spend_by_model(&conn, &format!("s.id = '{id}'"));
        let got: Vec<(String, String)> = c["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["providerId"].as_str().unwrap().to_string(),
                    m["modelId"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(got, want.keys().cloned().collect::<Vec<_>>(), "{id}");
    }
    // Tools: calls and errors per tool over the parent and its subagents.
    let mut stmt = conn
        .prepare(&format!(
            "SELECT json_extract(p.data, '$.tool'), COUNT(*), \
                    SUM(json_extract(p.data, '$.state.status') = 'error') \
             FROM part p JOIN session s ON s.id = p.session_id \
             WHERE json_extract(p.data, '$.type') = 'tool' AND ({family}) GROUP BY 1 ORDER BY 1"
        ))
        .unwrap();
    let want_tools: Vec<(String, u64, u64)> = stmt
        .query_map([], |row| {
            Ok((
                row.get(0)?,
                row.get::<_, i64>(1)? as u64,
                row.get::<_, i64>(2)? as u64,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let got_tools: Vec<(String, u64, u64)> = r["rollup"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["calls"].as_u64().unwrap(),
                t["errors"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got_tools, want_tools);
    // The subagent's tools are not in the parent's own list.
    let own_calls: u64 = r["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["calls"].as_u64().unwrap())
        .sum();
    let all_calls: u64 = want_tools.iter().map(|t| t.1).sum();
    assert!(own_calls < all_calls, "the subagent ran no tool?");
}

/// Per session, by SQL over its own completed tool parts (not those a fork copied):
/// `(additions, deletions, files)` — `edit`: `metadata.filediff`; `write` of a new file
/// (`metadata.exists` false): the lines of `input.content`; an overwrite: the file only.
fn own_edits(conn: &Connection, id: &str) -> (u64, u64, u64) {
    let own =
        "FROM part p JOIN message m ON m.id = p.message_id JOIN session s ON s.id = m.session_id \
               WHERE s.id = ?1 AND m.time_created >= s.time_created \
                 AND json_extract(p.data, '$.type') = 'tool' \
                 AND json_extract(p.data, '$.state.status') = 'completed'";
    let (edit_adds, edit_dels): (i64, i64) = conn
        .query_row(
            &format!(
                "SELECT TOTAL(json_extract(p.data, '$.state.metadata.filediff.additions')), \
                        TOTAL(json_extract(p.data, '$.state.metadata.filediff.deletions')) \
                 {own} AND json_extract(p.data, '$.tool') = 'edit'"
            ),
            [id],
            |r| Ok((r.get::<_, f64>(0)? as i64, r.get::<_, f64>(1)? as i64)),
        )
        .unwrap();
    // Lines of a new file's content: its newlines, plus one for an unterminated last line.
    let written: i64 = conn
        .query_row(
            &format!(
                "SELECT TOTAL(CASE WHEN json_extract(p.data, '$.state.metadata.exists') = 0 THEN \
                   length(c) - length(replace(c, char(10), '')) \
                   + (length(c) > 0 AND substr(c, -1) != char(10)) ELSE 0 END) \
                 FROM (SELECT p.data, json_extract(p.data, '$.state.input.content') AS c {own} \
                       AND json_extract(p.data, '$.tool') = 'write') p"
            ),
            [id],
            |r| Ok(r.get::<_, f64>(0)? as i64),
        )
        .unwrap();
    let files: i64 = conn
        .query_row(
            &format!(
                "SELECT COUNT(DISTINCT json_extract(p.data, '$.state.input.filePath')) {own} \
                 AND json_extract(p.data, '$.tool') IN ('edit', 'write')"
            ),
            [id],
            |r| r.get(0),
        )
        .unwrap();
    ((edit_adds + written) as u64, edit_dels as u64, files as u64)
}

#[test]
fn code_changes_are_the_sessions_own_edits_and_worktree_changes_its_snapshots() {
    let scratch = Scratch::new();
    let (records, conn) = export_kinds(&scratch);
    // The fake model edits files only with `edit` and `write` (the tools of this provider).
    let other: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM part WHERE json_extract(data, '$.type') = 'tool' \
             AND json_extract(data, '$.tool') IN ('multiedit', 'apply_patch', 'patch')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(other, 0);
    let mut edited = 0;
    let mut credited_elsewhere = 0;
    for (id, r) in &records {
        let (adds, dels, files) = own_edits(&conn, id);
        let c = &r["codeChanges"];
        assert_eq!(
            (
                c["additions"].as_u64(),
                c["deletions"].as_u64(),
                c["filesChanged"].as_u64()
            ),
            (Some(adds), Some(dels), Some(files)),
            "{id}"
        );
        edited += usize::from(files > 0);
        // The snapshot diffs of the working tree, as OpenCode stores them on user messages.
        let (wa, wd): (i64, i64) = conn
            .query_row(
                "SELECT TOTAL(json_extract(d.value, '$.additions')), \
                        TOTAL(json_extract(d.value, '$.deletions')) \
                 FROM message m, json_each(m.data, '$.summary.diffs') d WHERE m.session_id = ?1",
                [id],
                |row| Ok((row.get::<_, f64>(0)? as i64, row.get::<_, f64>(1)? as i64)),
            )
            .unwrap();
        let w = &r["worktreeChanges"];
        assert_eq!(
            (w["additions"].as_i64(), w["deletions"].as_i64()),
            (Some(wa), Some(wd)),
            "{id}"
        );
        if files == 0 && wa + wd > 0 {
            credited_elsewhere += 1;
        }
    }
    assert!(edited >= 5, "only {edited} sessions edited files");
    // Sessions that edited nothing, whose turns' snapshots still show another session's edits
    // in the same repository: the reason `codeChanges` no longer comes from them.
    assert!(credited_elsewhere > 0);
}

#[test]
fn apply_patch_edits_count_per_file_with_moves_and_deletions() {
    // A session on a GPT model, where OpenCode offers `apply_patch` (see the fixture's README).
    let fixture = repo_root().join("tests/fixtures/opencode-1.18.33-apply-patch");
    let scratch = Scratch::new();
    let db = scratch.path("oc/opencode.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    std::fs::copy(fixture.join("opencode.db"), &db).unwrap();
    let config = scratch.write_config("[export]\nstale_after_secs = 315360000\n");
    let out = run_once(&scratch, &config, &db);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = read_ndjson(&scratch.local_sink());
    assert_eq!(records.len(), 1);
    let r = &records[0];
    // By SQL: every file entry of the completed apply_patch calls; a move counts its target.
    let conn = sql(&db);
    let (calls, adds, dels, files): (i64, f64, f64, i64) = conn
        .query_row(
            "SELECT COUNT(DISTINCT p.id), TOTAL(json_extract(f.value, '$.additions')), \
                    TOTAL(json_extract(f.value, '$.deletions')), \
                    COUNT(DISTINCT COALESCE(json_extract(f.value, '$.movePath'), \
                                            json_extract(f.value, '$.filePath'))) \
             FROM part p, json_each(p.data, '$.state.metadata.files') f \
             WHERE json_extract(p.data, '$.tool') = 'apply_patch' \
               AND json_extract(p.data, '$.state.status') = 'completed'",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .unwrap();
    assert_eq!(calls, 3);
    let c = &r["codeChanges"];
    assert_eq!(c["additions"].as_f64(), Some(adds));
    assert_eq!(c["deletions"].as_f64(), Some(dels));
    assert_eq!(c["filesChanged"].as_i64(), Some(files));
    // What the scripted patches did: +4 +2 (two new files), +2 -1 (update), -3 (delete: OpenCode
    // counts `"temp\nfile\n".split("\n")`, three), +1 -1 (update and move), over three paths.
    assert_eq!((adds, dels, files), (9.0, 5.0, 3));
}
