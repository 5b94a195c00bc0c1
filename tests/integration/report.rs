//! The local store and `report` / `export`, through the real binary: each view's numbers on the
//! bundled OpenCode 1.18.33 database against SQL written here over OpenCode's own columns and
//! rows (never over the store); the kinds fixture's forks and subagents counted once; one row
//! per session after `once` twice and `once` then `run`; the store and Convex each receiving
//! everything while the other is down; golden files of the tables.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;
use serde_json::Value;

use crate::support::daemon::Daemon;
use crate::support::fault_server::{FaultServer, Mode, TOKEN};
use crate::support::*;

/// `once` on a copy of `db_file` into the local store alone; the scratch dir and the copy.
fn exported(db_file: &Path) -> (Scratch, PathBuf) {
    let scratch = Scratch::new();
    let db = scratch.path("oc/opencode.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    std::fs::copy(db_file, &db).unwrap();
    // Stale turns count as ended at once whatever the fixture's age (as `once` does anyway).
    // Plain project paths: the store holds what `[privacy]` lets out, and the checks compare
    // with the database's own directories (the default hashes them).
    let config = scratch.write_store_config(
        "[export]\nstale_after_secs = 315360000\n[privacy]\nproject_paths = \"plain\"\n",
    );
    run_once(&scratch, &config, &db);
    assert!(!scratch.local_sink().exists(), "no NDJSON file by default");
    (scratch, db)
}

/// `report <args> --json` on the scratch store, parsed.
fn report_json(scratch: &Scratch, args: &[&str]) -> Vec<Value> {
    let out = report(scratch, &[args, &["--json"]].concat());
    serde_json::from_str::<Value>(&out)
        .unwrap_or_else(|e| panic!("{e}: {out}"))
        .as_array()
        .unwrap()
        .clone()
}

/// `report <args>` on the scratch store: its stdout (asserting success).
fn report(scratch: &Scratch, args: &[&str]) -> String {
    let out = run(command(scratch)
        .arg("--config")
        .arg(scratch.path("config.toml"))
        .arg("report")
        .args(args));
    assert!(
        out.status.success(),
        "report {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// The day of every top-level session, with its whole tree's figures summed from OpenCode's own
/// `session` usage columns (`cost`, `tokens_*`), grouped by `date_expr` over the root's
/// `time_created` in seconds (`t`): (key → [sessions, subagents, cost, input, output, reasoning,
/// cache read, cache write]).
fn tree_totals(conn: &Connection, key_expr: &str) -> BTreeMap<String, [f64; 8]> {
    let q = format!(
        "WITH RECURSIVE tree(root, id) AS (
           SELECT id, id FROM session WHERE parent_id IS NULL
           UNION ALL SELECT tree.root, s.id FROM session s JOIN tree ON s.parent_id = tree.id)
         SELECT {key_expr} AS k, COUNT(DISTINCT tree.root),
                SUM(tree.root <> tree.id), SUM(s.cost), SUM(s.tokens_input),
                SUM(s.tokens_output), SUM(s.tokens_reasoning), SUM(s.tokens_cache_read),
                SUM(s.tokens_cache_write)
         FROM tree JOIN session s ON s.id = tree.id JOIN session r ON r.id = tree.root
         GROUP BY k ORDER BY k"
    );
    let mut stmt = conn.prepare(&q).unwrap();
    stmt.query_map([], |row| {
        let mut v = [0.0; 8];
        for (i, slot) in v.iter_mut().enumerate() {
            *slot = row.get::<_, f64>(i + 1)?;
        }
        Ok((row.get::<_, String>(0)?, v))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// Asserts a report row's figures equal `[sessions, subagents, cost, 5 token kinds]`.
fn assert_figures(row: &Value, want: &[f64; 8], what: &str) {
    assert_eq!(
        row["sessions"].as_f64().unwrap(),
        want[0],
        "{what}: sessions"
    );
    assert_eq!(
        row["subagents"].as_f64().unwrap(),
        want[1],
        "{what}: subagents"
    );
    assert!(
        close(row["cost"].as_f64().unwrap(), want[2]),
        "{what}: cost {} vs {}",
        row["cost"],
        want[2]
    );
    let t = &row["tokens"];
    for (i, kind) in ["input", "output", "reasoning", "cacheRead", "cacheWrite"]
        .into_iter()
        .enumerate()
    {
        assert_eq!(t[kind].as_f64().unwrap(), want[3 + i], "{what}: {kind}");
    }
    let total: f64 = want[3..].iter().sum();
    assert_eq!(t["total"].as_f64().unwrap(), total, "{what}: total");
}

fn by_key<'a>(rows: &'a [Value], key: &str) -> BTreeMap<String, &'a Value> {
    rows.iter()
        .map(|r| (r[key].as_str().unwrap().to_string(), r))
        .collect()
}

#[test]
fn daily_weekly_monthly_and_session_equal_opencodes_own_usage_columns_in_any_time_zone() {
    let (scratch, db) = exported(&fixture_dir().join("opencode.db"));
    let conn = sql(&db);
    // The fixture's own figure (its README): $0.0947 over 25 top-level sessions + 3 subagents.
    let all = tree_totals(&conn, "'all'");
    assert!(close(all["all"][2], 0.09472), "{:?}", all);
    assert_eq!((all["all"][0], all["all"][1]), (25.0, 3.0));

    for (tz, modifier) in [("UTC", "+0 hours"), ("Pacific/Kiritimati", "+14 hours")] {
        let t = format!("r.time_created / 1000, 'unixepoch', '{modifier}'");
        for (view, key, expr) in [
            ("daily", "date", format!("date({t})")),
            (
                "weekly",
                "week",
                format!("date({t}, '-6 days', 'weekday 1')"),
            ),
            ("monthly", "month", format!("strftime('%Y-%m', {t})")),
        ] {
            let want = tree_totals(&conn, &expr);
            let rows = report_json(&scratch, &[view, "--timezone", tz]);
            let got = by_key(&rows, key);
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>(),
                "{view} in {tz}"
            );
            for (k, w) in &want {
                assert_figures(got[k], w, &format!("{view} {k} in {tz}"));
            }
        }
    }
    // The fixture was written at 05:46 UTC on 2026-11-21: 19:46 in Kiritimati (+14), and one
    // hour later in Tokyo's day before midnight: the day moves only where it should.
    assert_eq!(
        report_json(&scratch, &["daily", "--timezone", "Pacific/Kiritimati"])[0]["date"],
        "2026-11-21"
    );
    assert_eq!(
        report_json(&scratch, &["daily", "--timezone", "Pacific/Pago_Pago"])[0]["date"],
        "2026-11-20"
    );

    // Per session: each top-level session with its subagents.
    let want = tree_totals(&conn, "r.id");
    let rows = report_json(&scratch, &["session", "--timezone", "UTC"]);
    let got = by_key(&rows, "sessionId");
    assert_eq!(got.len(), want.len());
    for (id, w) in &want {
        assert_figures(got[id], w, id);
        assert_eq!(got[id]["source"], "opencode");
    }
    // Oldest first.
    let created: Vec<i64> = rows
        .iter()
        .map(|r| r["createdAt"].as_i64().unwrap())
        .collect();
    assert!(created.windows(2).all(|w| w[0] <= w[1]));

    // Todos (the sessions' own `todo` rows) and the errors that ended turns, per day.
    let (todos, completed): (i64, i64) = conn
        .query_row(
            "SELECT COUNT(*), COALESCE(SUM(t.status = 'completed'), 0) FROM todo t
             JOIN session s ON s.id = t.session_id WHERE s.parent_id IS NULL",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let day = &report_json(&scratch, &["daily", "--timezone", "UTC"])[0];
    assert_eq!(day["todos"]["total"], todos);
    assert_eq!(day["todos"]["completed"], completed);
    // The fixture's README: s09, s19, c01 `APIError`, s14 `UnknownError`, s17
    // `MessageAbortedError`.
    assert_eq!(
        day["errorNames"],
        serde_json::json!({"APIError": 3, "MessageAbortedError": 1, "UnknownError": 1})
    );
    assert_eq!(day["errors"], 5);
}

#[test]
fn project_model_agent_tool_and_device_equal_sql_over_the_rows() {
    let (scratch, db) = exported(&fixture_dir().join("opencode.db"));
    let conn = sql(&db);

    let want = tree_totals(&conn, "r.directory");
    let rows = report_json(&scratch, &["project"]);
    let got = by_key(&rows, "project");
    assert_eq!(got.len(), 2);
    for (dir, w) in &want {
        assert_figures(got[dir], w, dir);
    }
    // --project by the directory's last component.
    let only_a = report_json(&scratch, &["project", "--project", "project-a"]);
    assert_eq!(only_a.len(), 1);
    assert_eq!(only_a[0]["project"], "/home/dev/oc-dev/work/project-a");

    // Per model: OpenCode's assistant messages (`data.modelID`, `data.cost`, `data.tokens`).
    let mut stmt = conn
        .prepare(
            "SELECT json_extract(data, '$.providerID') || '/' || json_extract(data, '$.modelID'),
                    COUNT(*), SUM(json_extract(data, '$.cost')),
                    SUM(json_extract(data, '$.tokens.input')),
                    SUM(json_extract(data, '$.tokens.output'))
             FROM message WHERE json_extract(data, '$.role') = 'assistant'
             GROUP BY 1",
        )
        .unwrap();
    let models: Vec<(String, i64, f64, i64, i64)> = stmt
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let rows = report_json(&scratch, &["model"]);
    assert_eq!(rows.len(), models.len());
    for (key, messages, cost, input, output) in &models {
        let r = rows
            .iter()
            .find(|r| {
                format!(
                    "{}/{}",
                    r["provider"].as_str().unwrap(),
                    r["model"].as_str().unwrap()
                ) == *key
            })
            .unwrap_or_else(|| panic!("no row for {key}"));
        assert_eq!(r["messages"], *messages, "{key}");
        assert!(close(r["cost"].as_f64().unwrap(), *cost), "{key}");
        assert_eq!(r["tokens"]["input"], *input, "{key}");
        assert_eq!(r["tokens"]["output"], *output, "{key}");
    }

    // Per agent: a session's own spend counts under its primary agent — OpenCode's internal
    // `compaction`, `title` and `summary` steps included — and each subagent's under the
    // subagent's. In this fixture every session's assistant messages have one agent besides
    // the internal ones, so that is the cost of each session's assistant messages, grouped by
    // that agent.
    let agents_per_session: i64 = conn
        .query_row(
            "SELECT MAX(n) FROM (SELECT COUNT(DISTINCT json_extract(data, '$.agent')) AS n
             FROM message WHERE json_extract(data, '$.role') = 'assistant'
               AND json_extract(data, '$.agent') NOT IN ('compaction', 'title', 'summary')
             GROUP BY session_id)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        agents_per_session, 1,
        "the fixture property this check relies on"
    );
    let mut stmt = conn
        .prepare(
            "WITH agent_of(session_id, agent) AS (
               SELECT session_id, MAX(json_extract(data, '$.agent')) FROM message
               WHERE json_extract(data, '$.role') = 'assistant'
                 AND json_extract(data, '$.agent') NOT IN ('compaction', 'title', 'summary')
               GROUP BY session_id)
             SELECT a.agent, SUM(json_extract(m.data, '$.cost')),
                    SUM(json_extract(m.data, '$.tokens.input'))
             FROM message m JOIN agent_of a ON a.session_id = m.session_id
             WHERE json_extract(m.data, '$.role') = 'assistant' GROUP BY 1",
        )
        .unwrap();
    let agents: Vec<(String, f64, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let rows = report_json(&scratch, &["agent"]);
    let got = by_key(&rows, "agent");
    assert_eq!(got.len(), agents.len());
    for (agent, cost, input) in &agents {
        assert!(
            close(got[agent]["cost"].as_f64().unwrap(), *cost),
            "{agent}"
        );
        assert_eq!(got[agent]["tokens"]["input"], *input, "{agent}");
    }
    // The subagents' agent: in 3 top-level sessions (s06, s12, c02 of the README).
    assert_eq!(got["general"]["sessions"], 3);

    // Per tool: OpenCode's tool parts, every session's (subagents' calls are in their
    // parent's rollup).
    let mut stmt = conn
        .prepare(
            "SELECT json_extract(data, '$.tool'), COUNT(*),
                    SUM(json_extract(data, '$.state.status') = 'error'),
                    SUM(CASE WHEN json_extract(data, '$.state.time.end') IS NOT NULL
                        THEN json_extract(data, '$.state.time.end')
                             - json_extract(data, '$.state.time.start') ELSE 0 END)
             FROM part WHERE json_extract(data, '$.type') = 'tool' GROUP BY 1",
        )
        .unwrap();
    let tools: Vec<(String, i64, i64, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let rows = report_json(&scratch, &["tool"]);
    let got = by_key(&rows, "tool");
    assert_eq!(got.len(), tools.len(), "{rows:?}");
    for (tool, calls, errors, ms) in &tools {
        assert_eq!(got[tool]["calls"], *calls, "{tool}");
        assert_eq!(got[tool]["errors"], *errors, "{tool}");
        assert_eq!(got[tool]["durationMs"], *ms, "{tool}");
    }
    // Calls sorted by count, most first.
    let calls: Vec<i64> = rows.iter().map(|r| r["calls"].as_i64().unwrap()).collect();
    assert!(calls.windows(2).all(|w| w[0] >= w[1]));
    assert_eq!(report_json(&scratch, &["skill"]), Vec::<Value>::new());

    // One device: this machine, with everything.
    let all = &tree_totals(&conn, "'all'")["all"];
    let rows = report_json(&scratch, &["device"]);
    assert_eq!(rows.len(), 1);
    assert_figures(&rows[0], all, "device");
    assert_eq!(rows[0]["deviceId"].as_str().unwrap().len(), 32);
}

#[test]
fn filters_breakdown_csv_and_export_agree_with_the_json() {
    let (scratch, _db) = exported(&fixture_dir().join("opencode.db"));
    let day = &report_json(&scratch, &["daily", "--timezone", "UTC"])[0];
    // --since/--until are whole days in the time zone.
    for (since, until, rows) in [
        ("2026-11-21", "2026-11-21", 1),
        ("2026-11-22", "2026-12-31", 0),
        ("2026-01-01", "2026-11-20", 0),
    ] {
        let got = report_json(
            &scratch,
            &[
                "daily",
                "--timezone",
                "UTC",
                "--since",
                since,
                "--until",
                until,
            ],
        );
        assert_eq!(got.len(), rows, "{since}..{until}");
    }
    assert_eq!(
        report_json(&scratch, &["daily", "--source", "claude-code"]),
        Vec::<Value>::new()
    );
    // --breakdown: the models inside the row sum to it and equal the model view.
    let with = &report_json(&scratch, &["daily", "--timezone", "UTC", "--breakdown"])[0];
    let models = with["models"].as_array().unwrap();
    let model_view = report_json(&scratch, &["model"]);
    assert_eq!(models.len(), model_view.len());
    let sum: f64 = models.iter().map(|m| m["cost"].as_f64().unwrap()).sum();
    assert!(close(sum, day["cost"].as_f64().unwrap()));
    // CSV: the same figures as the JSON, one header line.
    let csv = report(&scratch, &["daily", "--timezone", "UTC", "--csv"]);
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let row: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert!(lines.next().is_none());
    let col = |name: &str| row[header.iter().position(|h| *h == name).unwrap()];
    assert_eq!(col("date"), "2026-11-21");
    assert_eq!(col("sessions"), day["sessions"].to_string());
    assert_eq!(col("input"), day["tokens"]["input"].to_string());
    assert!(close(
        col("cost").parse().unwrap(),
        day["cost"].as_f64().unwrap()
    ));

    // export: the stored records, one per session, as the sink received them.
    let out = run(command(&scratch)
        .arg("--config")
        .arg(scratch.path("config.toml"))
        .args(["export", "--format", "ndjson"]));
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, read_store_records(&scratch.store()));
    assert_eq!(lines.len(), 25);
    let out = run(command(&scratch)
        .arg("--config")
        .arg(scratch.path("config.toml"))
        .args(["export", "--format", "json"]));
    let arr: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(arr.as_array().unwrap(), &lines);
}

/// The kinds fixture has a fork (with a copied prefix) and subagents: the totals count every
/// step once — SQL: the cost of the step-finish parts of each session's own messages (those
/// not created before the session, i.e. not copied into a fork).
#[test]
fn forks_and_subagents_are_counted_once_in_the_totals() {
    let (scratch, db) = exported(&kinds_dir().join("opencode.db"));
    let conn = sql(&db);
    let (cost, input, copies): (f64, i64, i64) = conn
        .query_row(
            "SELECT SUM(json_extract(p.data, '$.cost')),
                    SUM(json_extract(p.data, '$.tokens.input')),
                    (SELECT COUNT(*) FROM message m2 JOIN session s2 ON s2.id = m2.session_id
                      WHERE m2.time_created < s2.time_created)
             FROM part p JOIN message m ON m.id = p.message_id JOIN session s ON s.id = m.session_id
             WHERE json_extract(p.data, '$.type') = 'step-finish'
               AND m.time_created >= s.time_created",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert!(copies > 0, "the fixture has a fork with copied messages");
    let all_days = report_json(&scratch, &["monthly", "--timezone", "UTC"]);
    let got_cost: f64 = all_days.iter().map(|r| r["cost"].as_f64().unwrap()).sum();
    let got_input: i64 = all_days
        .iter()
        .map(|r| r["tokens"]["input"].as_i64().unwrap())
        .sum();
    assert!(close(got_cost, cost), "{got_cost} vs {cost}");
    assert_eq!(got_input, input);
    // The same with the subagents stored as rows of their own (they count nothing there).
    let scratch2 = Scratch::new();
    let db2 = scratch2.path("oc/opencode.db");
    std::fs::create_dir_all(db2.parent().unwrap()).unwrap();
    std::fs::copy(kinds_dir().join("opencode.db"), &db2).unwrap();
    let config = scratch2.write_store_config(
        "[export]\nstale_after_secs = 315360000\nskip_subagent_sessions = false\n",
    );
    run_once(&scratch2, &config, &db2);
    let children: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM session WHERE parent_id IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(children > 0);
    let rows = read_store_records(&scratch2.store());
    assert_eq!(
        rows.iter()
            .filter(|r| r.get("parentSessionId").is_some())
            .count() as i64,
        children
    );
    let again = report_json(&scratch2, &["monthly", "--timezone", "UTC"]);
    let again_cost: f64 = again.iter().map(|r| r["cost"].as_f64().unwrap()).sum();
    assert!(close(again_cost, cost), "{again_cost} vs {cost}");
}

/// Rows of the store by session id, with their `exportedAt`, read with plain SQL.
fn store_rows(path: &Path) -> BTreeMap<String, i64> {
    let conn =
        Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut stmt = conn
        .prepare("SELECT session_id, exported_at FROM stored_session")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn once_twice_and_once_then_run_leave_one_row_per_session() {
    let (scratch, db) = exported(&fixture_dir().join("opencode.db"));
    let roots = root_sessions(&sql(&db));
    let first = store_rows(&scratch.store());
    assert_eq!(
        first
            .keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        roots
    );
    // Twice: nothing new, the same rows.
    run_once(&scratch, &scratch.path("config.toml"), &db);
    assert_eq!(store_rows(&scratch.store()), first);
    // Then `run`, with a changed session: still one row per session, that one newer, and
    // `report` works while the daemon holds the store.
    let mut daemon = Daemon::start_local(&scratch, &scratch.path("config.toml"), &db);
    wait_for(30, "the daemon running", || {
        daemon.output().contains("running")
    });
    let changed = roots.iter().next().unwrap().clone();
    {
        let w = writer(&db);
        w.execute(
            "UPDATE session SET title = 'renamed by the test', time_updated = time_updated + 1000 WHERE id = ?1",
            [&changed],
        )
        .unwrap();
    }
    // A title change alone ends no turn, so it is exported with the next export of the
    // session; what matters here is that `run` re-exports nothing unchanged.
    std::thread::sleep(Duration::from_secs(2));
    let during = report_json(&scratch, &["session", "--timezone", "UTC"]);
    assert_eq!(during.len(), roots.len());
    let (status, _) = daemon.terminate(Duration::from_secs(15));
    assert!(status.success(), "{}", daemon.output());
    let after = store_rows(&scratch.store());
    assert_eq!(after.len(), roots.len());
    assert_eq!(after, first, "run re-exported an unchanged session");
}

/// A config with the fault server as Convex and the store; fast timers.
fn convex_config(scratch: &Scratch, db: &Path, url: &str) -> PathBuf {
    scratch.write_store_config(&format!(
        "[source]\ndb_path = \"{}\"\npoll_interval_ms = 50\n\
         [export]\ndebounce_ms = 0\nfinal_after_secs = 0\nstale_after_secs = 315360000\n\
         [convex]\nurl = \"{url}\"\ninitial_backoff_ms = 20\nmax_backoff_secs = 1\n",
        db.display()
    ))
}

fn status_json(scratch: &Scratch, config: &Path) -> Value {
    let out = run(command(scratch)
        .arg("--config")
        .arg(config)
        .args(["status", "--json"]));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn lane(status: &Value, name: &str) -> Value {
    status["outbox"]["lanes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["lane"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no lane {name}: {status}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convex_down_never_holds_back_the_store_and_a_locked_store_never_holds_back_convex() {
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();
    let roots = root_sessions(&sql(&db));
    let (_owner, server) = FaultServer::start().await;
    let config = convex_config(&scratch, &db, &server.url());

    // 1. Convex down: the store receives every session; Convex's lane keeps them all.
    server.set_mode(Mode::Refuse).await;
    let log = scratch.path("daemon.log");
    let mut d = Daemon::start(&scratch, &config, TOKEN, &log, &[]);
    tokio::task::block_in_place(|| {
        wait_for(30, "every session in the store", || {
            // (The file exists a moment before its tables do.)
            std::panic::catch_unwind(|| store_rows(&scratch.store()).len()).ok()
                == Some(roots.len())
        })
    });
    assert!(server.latest().is_empty());
    tokio::task::block_in_place(|| {
        wait_for(10, "the status file", || {
            let s = status_json(&scratch, &config);
            s["outbox"]["lanes"]
                .as_array()
                .is_some_and(|l| l.len() == 2)
                && lane(&s, "store")["pendingCount"] == 0
                && lane(&s, "convex")["pendingCount"] == roots.len()
        })
    });
    // `report` reads the store while the daemon runs.
    let rows = report_json(&scratch, &["session"]);
    assert_eq!(rows.len(), roots.len());

    // 2. Convex back: it receives everything; nothing pending anywhere.
    server.set_mode(Mode::Normal).await;
    tokio::task::block_in_place(|| {
        wait_for(30, "every session at Convex", || {
            server.latest().len() == roots.len()
        })
    });
    let (exit, _) = d.terminate(Duration::from_secs(15));
    assert!(exit.success(), "{}", d.output());
    let at_convex: std::collections::BTreeSet<String> = server.latest().into_keys().collect();
    assert_eq!(at_convex, roots);

    // 3. The store locked by another writer (a tool holding a write transaction): a changed
    //    session reaches Convex at once, and the store once the lock is gone.
    let locker = writer(&scratch.store());
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let changed = roots.iter().nth(3).unwrap().clone();
    let before = server.latest()[&changed]["revision"].as_i64().unwrap();
    // (Waiting on the log, not on `status`: `status` with no daemon running opens the outbox
    // itself, and a daemon starting at that moment would find it locked.)
    let mut cmd = command(&scratch);
    cmd.env("RUST_LOG", "info")
        .env("OPENCODE_TELEMETRY_INGEST_TOKEN", TOKEN)
        .arg("--config")
        .arg(&config)
        .arg("run");
    let mut d = Daemon::spawn(cmd, &log);
    tokio::task::block_in_place(|| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !d.output().contains("opened the opencode database") {
            assert!(
                std::time::Instant::now() < deadline && d.try_wait().is_none(),
                "the daemon is not running\n{}",
                d.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    crate::run_daemon::add_turn(&db, &changed, now);
    tokio::task::block_in_place(|| {
        wait_for(30, "the changed session at Convex", || {
            server
                .latest()
                .get(&changed)
                .is_some_and(|r| r["revision"].as_i64().unwrap() > before)
        })
    });
    // The store lane failed meanwhile (its busy timeout ran out: a retry, logged for its lane).
    tokio::task::block_in_place(|| {
        wait_for(30, "the store lane's retry", || {
            d.output().contains("lane=store")
        })
    });
    let stored_before = store_rows_shared(&locker, &changed);
    assert!(
        stored_before < server.latest()[&changed]["exportedAt"].as_i64().unwrap(),
        "the store could not have taken it yet"
    );
    let s = status_json(&scratch, &config);
    assert_eq!(lane(&s, "store")["pendingCount"], 1, "{s}");
    assert_eq!(lane(&s, "convex")["pendingCount"], 0, "{s}");
    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);
    let want = server.latest()[&changed]["exportedAt"].as_i64().unwrap();
    tokio::task::block_in_place(|| {
        wait_for(30, "the changed session in the store", || {
            store_rows(&scratch.store()).get(&changed) == Some(&want)
        })
    });
    let (exit, _) = d.terminate(Duration::from_secs(15));
    assert!(exit.success(), "{}", d.output());
    // Nothing lost in either: every session, the same version in both.
    let stored = store_rows(&scratch.store());
    let latest = server.latest();
    assert_eq!(stored.len(), roots.len());
    for (id, exported_at) in &stored {
        assert_eq!(
            latest[id]["exportedAt"].as_i64(),
            Some(*exported_at),
            "{id}"
        );
    }
}

/// `exportedAt` of `id` in the store, read through the connection holding its lock.
fn store_rows_shared(conn: &Connection, id: &str) -> i64 {
    conn.query_row(
        "SELECT exported_at FROM stored_session WHERE session_id = ?1",
        [id],
        |r| r.get(0),
    )
    .unwrap()
}

/// The human tables, against golden files under `tests/integration/golden/` (checked by hand
/// against the fixture's figures: see the README of that folder). Run with stdout a pipe: no
/// colour, no terminal width.
#[test]
fn the_human_tables_match_their_golden_files() {
    let (scratch, _db) = exported(&fixture_dir().join("opencode.db"));
    let dir = repo_root().join("tests/integration/golden");
    for (file, args) in [
        ("report-daily.txt", vec!["daily", "--timezone", "UTC"]),
        ("report-project.txt", vec!["project", "--timezone", "UTC"]),
        ("report-model.txt", vec!["model", "--timezone", "UTC"]),
        ("report-agent.txt", vec!["agent", "--timezone", "UTC"]),
        ("report-tool.txt", vec!["tool", "--timezone", "UTC"]),
        (
            "report-monthly-breakdown.txt",
            vec!["monthly", "--timezone", "UTC", "--breakdown"],
        ),
    ] {
        let got = report(&scratch, &args);
        assert!(!got.contains('\u{1b}'), "colour codes without a terminal");
        let path = dir.join(file);
        let want =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(got, want, "{file}");
    }
}

/// `once` with Convex down: the store gets every session, `once` exits 1 naming Convex and
/// what stays queued for it; the next `once`, with Convex back, delivers exactly those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_with_convex_down_fills_the_store_and_leaves_convex_its_records() {
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();
    let roots = root_sessions(&sql(&db));
    let (_owner, server) = FaultServer::start().await;
    let config = convex_config(&scratch, &db, &server.url());
    server.set_mode(Mode::Refuse).await;
    let once = |timeout: &str| {
        tokio::task::block_in_place(|| {
            run(command(&scratch)
                .env("OPENCODE_TELEMETRY_INGEST_TOKEN", TOKEN)
                .arg("--config")
                .arg(&config)
                .args(["once", "--timeout-secs", timeout]))
        })
    };
    let out = once("2");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot deliver to convex {}",
            server.url().trim_end_matches('/')
        )) && stderr.contains(&format!("{} record(s) stay queued for it", roots.len())),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("delivered {} to local store", roots.len())),
        "{stderr}"
    );
    assert_eq!(store_rows(&scratch.store()).len(), roots.len());
    let s = status_json(&scratch, &config);
    assert_eq!(lane(&s, "store")["pendingCount"], 0, "{s}");
    assert_eq!(lane(&s, "convex")["pendingCount"], roots.len(), "{s}");

    server.set_mode(Mode::Normal).await;
    let out = once("20");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let at_convex: std::collections::BTreeSet<String> = server.latest().into_keys().collect();
    assert_eq!(at_convex, roots);
    let stored = store_rows(&scratch.store());
    for (id, exported_at) in &stored {
        assert_eq!(
            server.latest()[id]["exportedAt"].as_i64(),
            Some(*exported_at),
            "{id}"
        );
    }
    let s = status_json(&scratch, &config);
    assert_eq!(s["outbox"]["pendingCount"], 0, "{s}");
}

/// An outbox from a build before the local store: the tracker kept every session's last record
/// (`record/<id>`) but there is no store. Simulated by removing the store and the mark that it
/// was filled after a `once`. The next `once` fills the store with every session, sends nothing
/// to the other sinks (the NDJSON file gets no new line), and a third `once` gives nothing.
#[test]
fn an_upgrade_fills_the_new_store_with_the_sessions_exported_before_it() {
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();
    let config = scratch.write_config("");
    run_once(&scratch, &config, &db);
    let roots = root_sessions(&sql(&db));
    let lines = read_ndjson(&scratch.local_sink()).len();
    assert_eq!(lines, roots.len());
    let before = store_rows(&scratch.store());
    // The state of an older build: no store, no mark.
    for f in ["sessions.db", "sessions.db-wal", "sessions.db-shm"] {
        let _ = std::fs::remove_file(scratch.path(&format!("data/{f}")));
    }
    {
        let ob = opencode_telemetry::queue::Outbox::open(
            &scratch.path("data"),
            &opencode_telemetry::config::QueueConfig::default(),
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(ob.commit(opencode_telemetry::queue::Commit {
            state_removes: vec![opencode_telemetry::daemon::STORE_FILLED_KEY.to_vec()],
            ..Default::default()
        }))
        .unwrap();
        rt.block_on(ob.flush()).unwrap();
    }
    // (sled finishes closing on its own threads a moment after the handle is dropped.)
    std::thread::sleep(Duration::from_millis(500));
    let out = run_once(&scratch, &config, &db);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("delivered {} to local store", roots.len())),
        "{stderr}"
    );
    assert_eq!(
        store_rows(&scratch.store()),
        before,
        "the same versions as before"
    );
    assert_eq!(
        read_ndjson(&scratch.local_sink()).len(),
        lines,
        "the other sinks got nothing again"
    );
    let out = run_once(&scratch, &config, &db);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("delivered 0 to local store"), "{stderr}");
}
