//! End to end: the real binary → HTTP → the project's Convex functions (`convex/convex/`:
//! the `POST /ingest` HTTP action and the upsert mutation it calls), executed by convex-test
//! (which enforces Convex's 1 MiB document limit) behind the small HTTP shim
//! `convex/emulator/shim.ts` → the rows queried back through its `/api/query` and compared with
//! the records.
//!
//! Needs `npm ci` in `convex/` (`.ci/run` does it).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use opencode_telemetry::config::{ConvexConfig, Secret};
use opencode_telemetry::export::{self, SessionExport};
use opencode_telemetry::sink::{ConvexSink, Outcome, RecordOutcome, Sink};
use serde_json::{json, Value};

use crate::support::*;

const TOKEN: &str = "e2e-ingest-token-0123456789";

/// A running shim (`convex/emulator/shim.ts`); killed on drop.
pub struct Emulator {
    child: Child,
    /// `http://127.0.0.1:<port>`: the HTTP actions (like `https://<name>.convex.site`, so
    /// `POST <url>/ingest`) and the read-back route `POST <url>/api/query`.
    pub url: String,
    /// One JSON line per request served (`SHIM_LOG`).
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Emulator {
    /// Starts `node --import tsx convex/emulator/shim.ts` (one process, so the kill on drop
    /// stops it) on a free port with `INGEST_TOKEN` set and the legacy shared token allowed
    /// (`ALLOW_LEGACY_INGEST_TOKEN=1`; device tokens are made through the shim's `/api/mutation`
    /// `devices:create`).
    pub fn start(ingest_token: &str) -> Emulator {
        Emulator::start_with(&[
            ("INGEST_TOKEN", ingest_token),
            ("ALLOW_LEGACY_INGEST_TOKEN", "1"),
        ])
    }

    /// Starts the shim as a new deployment is set up: no `INGEST_TOKEN`, the legacy shared
    /// token not allowed; only device tokens (made with [`Emulator::mutation`]
    /// `devices:create`) are accepted.
    pub fn start_devices_only() -> Emulator {
        Emulator::start_with(&[])
    }

    /// Starts the shim with these deployment environment variables.
    fn start_with(deployment_env: &[(&str, &str)]) -> Emulator {
        let root = repo_root();
        let tsx = root.join("convex/node_modules/tsx");
        assert!(
            tsx.exists(),
            "{} is missing: run `npm ci` in convex/ (the README's test command does)",
            tsx.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("requests.jsonl");
        let mut child = Command::new("node")
            .args(["--import", "tsx"])
            .arg(root.join("convex/emulator/shim.ts"))
            .current_dir(root.join("convex"))
            .env("SHIM_PORT", "0")
            .env("SHIM_LOG", &log)
            .env_remove("INGEST_TOKEN")
            .env_remove("ALLOW_LEGACY_INGEST_TOKEN")
            .envs(deployment_env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the convex shim (node on PATH)");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the shim did not report its port within 60 s");
        let url = line
            .strip_prefix("convex-shim listening on ")
            .unwrap_or_else(|| panic!("expected the listening line, got {line:?}"))
            .trim()
            .to_string();
        Emulator {
            child,
            url,
            log,
            _dir: dir,
        }
    }

    /// Runs a query (internal ones too) through the shim's `/api/query` and returns its value.
    pub fn query(&self, path: &str, args: Value) -> Value {
        let body = json!({"path": path, "args": args});
        let v = post_json(&format!("{}/api/query", self.url), &body);
        assert_eq!(v["status"], "success", "{v}");
        v["value"].clone()
    }

    /// Runs a mutation (internal ones too) through the shim's `/api/mutation` and returns its
    /// value: the owner's `npx convex run devices:create …`.
    pub fn mutation(&self, path: &str, args: Value) -> Value {
        let body = json!({"path": path, "args": args});
        let v = post_json(&format!("{}/api/mutation", self.url), &body);
        assert_eq!(v["status"], "success", "{v}");
        v["value"].clone()
    }

    /// Every stored session, through the paginated `sessions:recent` query.
    pub fn all_sessions(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor = Value::Null;
        loop {
            let page = self.query(
                "sessions:recent",
                json!({"paginationOpts": {"numItems": 100, "cursor": cursor}}),
            );
            out.extend(page["page"].as_array().unwrap().iter().cloned());
            if page["isDone"] == json!(true) {
                return out;
            }
            cursor = page["continueCursor"].clone();
        }
    }

    /// The requests served so far on `path`, as logged.
    pub fn requests_to(&self, path: &str) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["path"] == path)
            .collect()
    }
}

/// POSTs JSON and returns the JSON reply (any status).
pub fn post_json(url: &str, body: &Value) -> Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let resp = reqwest::Client::new()
            .post(url)
            .json(body)
            .send()
            .await
            .expect("request to the shim");
        let bytes = resp.bytes().await.unwrap();
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("bad reply {e}: {}", String::from_utf8_lossy(&bytes)))
    })
}

/// Numbers as f64 and Convex's system fields removed, so a stored document compares equal to
/// the record that was sent (Convex stores every number as float64).
fn normalize(v: &Value) -> Value {
    match v {
        Value::Number(n) => json!(n.as_f64().unwrap()),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(k, _)| !k.starts_with('_'))
                .map(|(k, v)| (k.clone(), normalize(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A record without the fields that say when it was built (`exportedAt`, `revision`): the
/// reference comes from another `once`.
fn without_exported_at(v: &Value) -> Value {
    let mut v = normalize(v);
    v.as_object_mut().unwrap().remove("exportedAt");
    v.as_object_mut().unwrap().remove("revision");
    v
}

#[test]
fn records_reach_the_convex_functions_in_batches_and_read_back_equal() {
    let emu = Emulator::start(TOKEN);
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();

    // The same pass to the local sink gives the reference records.
    // Every field the daemon can send (level "content"), so every one is round-tripped.
    let local_cfg =
        scratch.write_config("[export]\ninclude_messages = true\n[privacy]\nlevel = \"content\"\n");
    run_once(&scratch, &local_cfg, &db);
    let reference = read_ndjson(&scratch.local_sink());
    assert_eq!(reference.len(), 25);

    let convex_cfg = scratch.path("convex.toml");
    std::fs::write(
        &convex_cfg,
        format!(
            "data_dir = \"{}\"\n[export]\ninclude_messages = true\n[privacy]\nlevel = \"content\"\n[convex]\nurl = \"{}\"\nbatch_size = 10\n",
            scratch.path("data-convex").display(),
            emu.url
        ),
    )
    .unwrap();
    // A second install on the same machine (its own data dir): nothing delivered yet.
    let fresh_cfg = scratch.path("convex-fresh.toml");
    std::fs::write(
        &fresh_cfg,
        std::fs::read_to_string(&convex_cfg)
            .unwrap()
            .replace("data-convex", "data-convex-fresh"),
    )
    .unwrap();
    let once_with = |cfg: &std::path::Path, token: &str| {
        run(command(&scratch)
            .env("OPENCODE_TELEMETRY_INGEST_TOKEN", token)
            .arg("--config")
            .arg(cfg)
            .arg("--db")
            .arg(&db)
            .arg("once"))
    };
    let once = |token: &str| once_with(&convex_cfg, token);
    let out = once(TOKEN);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    for r in &reference {
        let id = r["sessionId"].as_str().unwrap();
        let doc = emu.query("sessions:get", json!({"sessionId": id}));
        assert!(doc.is_object(), "no row for {id}");
        assert!(doc["exportedAt"].as_f64().unwrap() >= r["exportedAt"].as_f64().unwrap());
        assert!(doc["revision"].as_f64().unwrap() >= r["revision"].as_f64().unwrap());
        assert_eq!(without_exported_at(&doc), without_exported_at(r), "{id}");
    }
    assert_eq!(emu.all_sessions().len(), 25);
    // The totals include the subagent sessions (only rolled up into their parents, the default)
    // exactly once: they equal OpenCode's own `session.cost` over every session of the database.
    let conn = sql(&db);
    let (opencode_cost, first_ms, last_ms): (f64, i64, i64) = conn
        .query_row(
            "SELECT SUM(cost), MIN(time_created), MAX(time_created) FROM session",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    let children: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM session WHERE parent_id IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(children > 0, "the fixture has subagent sessions");
    let range = json!({"from": day(first_ms), "to": day(last_ms)});
    let daily = emu.query("totals:daily", range.clone());
    let total_cost = daily["total"]["cost"].as_f64().unwrap();
    assert!(
        (total_cost - opencode_cost).abs() < 1e-9,
        "totals:daily {total_cost} vs OpenCode's session.cost {opencode_cost}"
    );
    assert_eq!(daily["total"]["sessions"], reference.len());
    let by_model: f64 = emu
        .query("totals:byModel", range)
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["cost"].as_f64().unwrap())
        .sum();
    assert!(
        (by_model - opencode_cost).abs() < 1e-9,
        "{by_model} vs {opencode_cost}"
    );
    // 25 records due at once went in batches of at most `batch_size` (10): 3 requests.
    let ingests = emu.requests_to("/ingest");
    assert_eq!(ingests.len(), 3, "{ingests:?}");
    assert!(ingests.iter().all(|e| e["status"] == 200), "{ingests:?}");

    // A second pass over the unchanged database exports nothing and sends nothing.
    let out = once(TOKEN);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(emu.all_sessions().len(), 25);
    assert_eq!(emu.requests_to("/ingest").len(), 3);

    // A wrong token: a clear error, exit 1, the token never printed, the records kept queued.
    let out = once_with(&fresh_cfg, "wrong-token-value");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ingest token"), "{stderr}");
    assert!(
        !stderr.contains("wrong-token-value") && !stderr.contains(TOKEN),
        "{stderr}"
    );
    assert_eq!(emu.requests_to("/ingest").last().unwrap()["status"], 401);
    let status = run(command(&scratch)
        .arg("--config")
        .arg(&fresh_cfg)
        .arg("status"));
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("25"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
}

/// "YYYY-MM-DD" (UTC) of an epoch-millisecond time (the civil-from-days algorithm of
/// Howard Hinnant's date library).
pub fn day(ms: i64) -> String {
    let z = ms.div_euclid(86_400_000) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[test]
fn day_names_the_utc_date() {
    for (ms, want) in [
        (0, "1970-01-01"),
        (951_782_400_000, "2000-02-29"),
        (1_772_323_199_999, "2026-02-28"),
        (1_772_323_200_000, "2026-03-01"),
        (-1, "1969-12-31"),
    ] {
        assert_eq!(day(ms), want, "{ms}");
    }
}

/// A session far over Convex's limits (a long title, a long transcript, thousands of todos):
/// the real functions refuse it as it is — as a `rejected` result, while the ordinary record
/// sent with it is stored — and store it once the daemon has fitted it, with the marker and
/// `truncated` saying what was cut, and every count and total intact.
#[test]
fn an_oversized_session_is_stored_shortened_not_refused() {
    let emu = Emulator::start(TOKEN);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fixture = repo_root().join("convex/tests/fixtures/full-record.json");
    let mut base: SessionExport =
        serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    base.truncated.clear();
    let mut big = base.clone();
    big.session_id = "ses_oversized".into();
    big.title = "t".repeat(5000);
    let template = big.messages.as_ref().unwrap()[0].clone();
    big.messages = Some(
        (0..300)
            .map(|i| {
                let mut m = template.clone();
                m.id = format!("msg_{i:04}");
                m.text = format!("message {i} ").repeat(800);
                m
            })
            .collect(),
    );
    let todo = big.todos.as_ref().unwrap()[0].clone();
    big.todos = Some(vec![todo; 9000]);
    let raw = serde_json::to_vec(&big).unwrap();
    assert!(raw.len() > 2 << 20, "{} bytes", raw.len());

    let sink = ConvexSink::try_from(&ConvexConfig {
        url: emu.url.clone(),
        ingest_token: Secret::new(TOKEN),
        ..ConvexConfig::default()
    })
    .unwrap();
    let ordinary = serde_json::to_vec(&base).unwrap();
    let got = rt.block_on(sink.send(&[&raw, &ordinary]));
    let Outcome::Delivered(records) = &got else {
        panic!("{got:?}")
    };
    assert!(
        matches!(&records[0], RecordOutcome::Refused { reason } if reason.starts_with("rejected by the deployment: ")),
        "{got:?}"
    );
    assert_eq!(records[1], RecordOutcome::Accepted, "{got:?}");
    // The rest of the batch was stored.
    assert_eq!(
        emu.query("sessions:get", json!({"sessionId": base.session_id}))["sessionId"],
        json!(base.session_id)
    );
    assert_eq!(
        emu.query("sessions:get", json!({"sessionId": "ses_oversized"})),
        Value::Null
    );

    let mut fitted = big.clone();
    export::fit(&mut fitted);
    let json_fitted = serde_json::to_vec(&fitted).unwrap();
    assert!(json_fitted.len() <= export::fit::MAX_RECORD_BYTES);
    let got = rt.block_on(sink.send(&[&json_fitted]));
    assert!(
        matches!(&got, Outcome::Delivered(records) if records[..] == [RecordOutcome::Accepted]),
        "{got:?}"
    );
    let doc = emu.query("sessions:get", json!({"sessionId": "ses_oversized"}));
    assert_eq!(
        normalize(&doc),
        normalize(&serde_json::to_value(&fitted).unwrap())
    );
    assert_eq!(doc["truncated"], json!(["messages", "title", "todos"]));
    assert!(doc["title"]
        .as_str()
        .unwrap()
        .ends_with("… [truncated by opencode-telemetry: 3976 more chars]"));
    // Counts and totals are the session's, not the shortened arrays'.
    for key in ["messageCount", "todoStats", "tokens", "cost", "rollup"] {
        assert_eq!(
            normalize(&doc[key]),
            normalize(&serde_json::to_value(&big).unwrap()[key]),
            "{key}"
        );
    }
}

/// A session deleted in OpenCode, through the real binary and the real Convex functions: by
/// default its stored document's content is replaced by the tombstone (no title, paths, todos
/// or messages) and the totals keep its spend; with `on_delete = "delete"` the document is
/// removed and the totals lose exactly its spend (OpenCode's `session.cost` of it and its
/// subagents, read from the database before the deletion).
#[test]
fn a_deletion_replaces_the_stored_content_with_the_tombstone_or_removes_it() {
    let emu = Emulator::start(TOKEN);
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();
    let write_config = |on_delete: &str| {
        scratch.write_config(&format!(
            "[export]\ninclude_messages = true\n[privacy]\nlevel = \"content\"\non_delete = \"{on_delete}\"\n[convex]\nurl = \"{}\"\n",
            emu.url
        ))
    };
    let once = |config: &std::path::Path| {
        let out = run(command(&scratch)
            .env("OPENCODE_TELEMETRY_INGEST_TOKEN", TOKEN)
            .arg("--config")
            .arg(config)
            .arg("--db")
            .arg(&db)
            .arg("once"));
        assert!(out.status.success(), "{out:?}");
    };
    let config = write_config("tombstone");
    once(&config);
    let conn = sql(&db);
    let (opencode_cost, first_ms, last_ms): (f64, i64, i64) = conn
        .query_row(
            "SELECT SUM(cost), MIN(time_created), MAX(time_created) FROM session",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    let range = json!({"from": day(first_ms), "to": day(last_ms)});
    let total = || emu.query("totals:daily", range.clone())["total"].clone();
    assert!((total()["cost"].as_f64().unwrap() - opencode_cost).abs() < 1e-9);
    // Two top-level sessions with a title and todos; the cost of each with its subagents.
    let picked: Vec<(String, f64)> = conn
        .prepare(
            "SELECT s.id, s.cost + COALESCE((SELECT SUM(c.cost) FROM session c WHERE c.parent_id = s.id), 0)
             FROM session s WHERE s.parent_id IS NULL AND s.title != ''
             AND EXISTS (SELECT 1 FROM todo t WHERE t.session_id = s.id) ORDER BY s.id LIMIT 2",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    drop(conn);
    assert_eq!(picked.len(), 2);
    let delete = |id: &str| {
        let w = rusqlite::Connection::open(&db).unwrap();
        for sql in [
            "DELETE FROM session WHERE parent_id = ?1",
            "DELETE FROM session WHERE id = ?1",
            "DELETE FROM event_sequence WHERE aggregate_id = ?1",
        ] {
            w.execute(sql, [id]).unwrap();
        }
    };

    let (kept, _) = &picked[0];
    let before = emu.query("sessions:get", json!({"sessionId": kept}));
    assert!(before["title"].is_string() && before["todos"].is_array());
    delete(kept);
    once(&config);
    let doc = emu.query("sessions:get", json!({"sessionId": kept}));
    assert_eq!(doc["endReason"], "deleted");
    assert_eq!(doc["deletion"], "tombstone");
    for gone in [
        "title",
        "hostname",
        "projectDirectory",
        "projectWorktree",
        "todos",
        "messages",
    ] {
        assert!(
            doc.get(gone).is_none(),
            "the stored tombstone still has {gone}"
        );
    }
    for key in [
        "messageCount",
        "tokens",
        "cost",
        "todoStats",
        "models",
        "createdAt",
    ] {
        assert_eq!(normalize(&doc[key]), normalize(&before[key]), "{key}");
    }
    assert!((total()["cost"].as_f64().unwrap() - opencode_cost).abs() < 1e-9);
    assert_eq!(total()["sessions"], 25);

    let (removed, removed_cost) = &picked[1];
    let config = write_config("delete");
    delete(removed);
    once(&config);
    assert_eq!(
        emu.query("sessions:get", json!({"sessionId": removed})),
        Value::Null
    );
    let after = total()["cost"].as_f64().unwrap();
    assert!(
        (after - (opencode_cost - removed_cost)).abs() < 1e-9,
        "{after} vs {opencode_cost} - {removed_cost}"
    );
    assert_eq!(total()["sessions"], 24);
    assert_eq!(emu.all_sessions().len(), 24);
}
