//! `[privacy]` end to end: what each level lets reach the sink, field by field, and a corpus
//! of planted secrets that reaches no sink, log, outbox file or status file.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::daemon::Daemon;
use crate::support::*;

/// Every leaf path of a record (object keys joined by `.`, array items as `[]`; an array of
/// scalars is its key; an empty array holds nothing and has none), walked here independently of
/// the daemon's code.
fn leaves(v: &Value) -> BTreeSet<String> {
    fn walk(v: &Value, path: String, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(v, p, out);
                }
            }
            Value::Array(a) if a.is_empty() => {}
            Value::Array(a) if a.iter().any(Value::is_object) => {
                for i in a {
                    walk(i, format!("{path}[]"), out);
                }
            }
            _ => {
                out.insert(path);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(v, String::new(), &mut out);
    out
}

/// What the `counts` level lets leave (the README's table, first row): numbers, times, ids,
/// versions and the names of models, agents, tools, skills and error kinds.
const COUNTS: &[&str] = &[
    "schemaVersion",
    "sessionId",
    "deviceId",
    "opencodeVersion",
    "daemonVersion",
    "projectId",
    "parentSessionId",
    "forkedFrom",
    "createdAt",
    "updatedAt",
    "exportedAt",
    "revision",
    "contentHash",
    "archivedAt",
    "deletedAt",
    "durationMs",
    "messageCount",
    "userMessageCount",
    "assistantMessageCount",
    "agentsUsed",
    "primaryAgent",
    "todoStats.total",
    "todoStats.completed",
    "todoStats.cancelled",
    "todoStats.pending",
    "todoStats.inProgress",
    "codeChanges.additions",
    "codeChanges.deletions",
    "codeChanges.filesChanged",
    "worktreeChanges.additions",
    "worktreeChanges.deletions",
    "worktreeChanges.filesChanged",
    "tokens.input",
    "tokens.output",
    "tokens.reasoning",
    "tokens.cacheRead",
    "tokens.cacheWrite",
    "cost",
    "models[].providerId",
    "models[].modelId",
    "models[].messages",
    "models[].tokens.input",
    "models[].tokens.output",
    "models[].tokens.reasoning",
    "models[].tokens.cacheRead",
    "models[].tokens.cacheWrite",
    "models[].cost",
    "tools[].name",
    "tools[].calls",
    "tools[].errors",
    "tools[].durationMs",
    "skills[].name",
    "skills[].calls",
    "skills[].errors",
    "skills[].durationMs",
    "inherited.messageCount",
    "inherited.tokens.input",
    "inherited.tokens.output",
    "inherited.tokens.reasoning",
    "inherited.tokens.cacheRead",
    "inherited.tokens.cacheWrite",
    "inherited.cost",
    "inherited.models[].providerId",
    "inherited.models[].modelId",
    "inherited.models[].messages",
    "inherited.models[].tokens.input",
    "inherited.models[].tokens.output",
    "inherited.models[].tokens.reasoning",
    "inherited.models[].tokens.cacheRead",
    "inherited.models[].tokens.cacheWrite",
    "inherited.models[].cost",
    "reverted.messageCount",
    "reverted.tokens.input",
    "reverted.tokens.output",
    "reverted.tokens.reasoning",
    "reverted.tokens.cacheRead",
    "reverted.tokens.cacheWrite",
    "reverted.cost",
    "endReason",
    "error.name",
    "incomplete",
    "children[].sessionId",
    "children[].agent",
    "children[].messageCount",
    "children[].tokens.input",
    "children[].tokens.output",
    "children[].tokens.reasoning",
    "children[].tokens.cacheRead",
    "children[].tokens.cacheWrite",
    "children[].cost",
    "children[].models[].providerId",
    "children[].models[].modelId",
    "children[].models[].messages",
    "children[].models[].tokens.input",
    "children[].models[].tokens.output",
    "children[].models[].tokens.reasoning",
    "children[].models[].tokens.cacheRead",
    "children[].models[].tokens.cacheWrite",
    "children[].models[].cost",
    "children[].error.name",
    "children[].models",
    "rollup.sessions",
    "rollup.messageCount",
    "rollup.tokens.input",
    "rollup.tokens.output",
    "rollup.tokens.reasoning",
    "rollup.tokens.cacheRead",
    "rollup.tokens.cacheWrite",
    "rollup.cost",
    "rollup.models[].providerId",
    "rollup.models[].modelId",
    "rollup.models[].messages",
    "rollup.models[].tokens.input",
    "rollup.models[].tokens.output",
    "rollup.models[].tokens.reasoning",
    "rollup.models[].tokens.cacheRead",
    "rollup.models[].tokens.cacheWrite",
    "rollup.models[].cost",
    "rollup.tools[].name",
    "rollup.tools[].calls",
    "rollup.tools[].errors",
    "rollup.tools[].durationMs",
    "rollup.skills[].name",
    "rollup.skills[].calls",
    "rollup.skills[].errors",
    "rollup.skills[].durationMs",
    "truncated",
    "corrected",
    "redactions",
    "deletion",
];
/// Added by `metadata`: the todo and message items without text, and (hashed) paths.
const METADATA: &[&str] = &[
    "todos[].status",
    "todos[].priority",
    "messages[].id",
    "messages[].role",
    "messages[].agent",
    "messages[].providerId",
    "messages[].modelId",
    "messages[].createdAt",
    "messages[].completedAt",
    "messages[].finish",
    "messages[].error",
    "projectDirectory",
    "projectWorktree",
];
/// Added by `content`: the host name and every free text.
const CONTENT: &[&str] = &[
    "hostname",
    "title",
    "children[].title",
    "todos[].content",
    "error.message",
    "children[].error.message",
    "messages[].text",
];

fn allowed(level: &str) -> BTreeSet<String> {
    let mut set: BTreeSet<String> = COUNTS.iter().map(|s| s.to_string()).collect();
    if level != "counts" {
        set.extend(METADATA.iter().map(|s| s.to_string()));
    }
    if level == "content" {
        set.extend(CONTENT.iter().map(|s| s.to_string()));
    }
    set
}

/// `once` on the bundled database at each level (todos and messages included): every field of
/// every record is one the level allows, and the fields that mark the level are there.
#[test]
fn each_level_sends_exactly_the_fields_it_allows() {
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();
    let conn = sql(&db);
    let dirs: BTreeSet<String> = conn
        .prepare("SELECT directory FROM session")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for level in ["counts", "metadata", "content"] {
        let data = scratch.path(&format!("data-{level}"));
        let config = scratch.path(&format!("{level}.toml"));
        std::fs::write(
            &config,
            format!(
                "data_dir = \"{0}\"\n[export]\ninclude_messages = true\n[privacy]\nlevel = \"{level}\"\n\
                 [local]\npath = \"{0}/sessions.ndjson\"\n",
                data.display()
            ),
        )
        .unwrap();
        let out = run_once(&scratch, &config, &db);
        assert!(out.status.success(), "{level}: {out:?}");
        let records = read_ndjson(&data.join("sessions.ndjson"));
        assert_eq!(records.len(), 25, "{level}");
        let allowed = allowed(level);
        let mut seen = BTreeSet::new();
        for r in &records {
            let paths = leaves(r);
            let extra: Vec<&String> = paths.difference(&allowed).collect();
            assert!(
                extra.is_empty(),
                "{level}: {} sent {extra:?}",
                r["sessionId"]
            );
            seen.extend(paths);
        }
        let has = |p: &str| seen.contains(p);
        match level {
            "counts" => {
                assert!(!has("todos[].status") && !has("projectDirectory"));
            }
            "metadata" => {
                assert!(has("todos[].status") && has("messages[].role"));
                assert!(!has("title") && !has("hostname"));
                for r in &records {
                    let d = r["projectDirectory"].as_str().unwrap();
                    assert!(
                        d.len() == 37 && d.starts_with("hmac:"),
                        "{d}: not a keyed hash"
                    );
                }
            }
            _ => {
                for p in ["title", "hostname", "todos[].content", "messages[].text"] {
                    assert!(has(p), "content without {p}");
                }
                for r in &records {
                    assert!(dirs.contains(r["projectDirectory"].as_str().unwrap()));
                }
            }
        }
    }
}

/// Real-shaped secrets (generated, none real) and where they are planted.
fn secrets() -> Vec<(&'static str, String)> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut pick = |alphabet: &str, n: usize| -> String {
        let a: Vec<char> = alphabet.chars().collect();
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                a[(x % a.len() as u64) as usize]
            })
            .collect()
    };
    let alnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    vec![
        (
            "title",
            format!("AKIA{}", pick("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)),
        ),
        ("todo", format!("ghp_{}", pick(alnum, 36))),
        ("error", format!("sk-proj-{}", pick(alnum, 48))),
        (
            "child title",
            format!(
                "xoxb-{}-{}-{}",
                pick("0123456789", 12),
                pick("0123456789", 13),
                pick(alnum, 24)
            ),
        ),
        ("directory", format!("glpat-{}", pick(alnum, 20))),
        ("message pem", format!("{}{}", pick(b64, 64), pick(b64, 40))),
        ("message aws", pick(&format!("{alnum}/+"), 40)),
        ("message url", pick(alnum, 18)),
        ("malformed row", format!("sk-proj-{}", pick(alnum, 40))),
    ]
}

/// The secret corpus planted into a generated database (title, todo text, error message, a
/// subagent's title, the directory, message texts) never reaches the sink, the daemon's log,
/// the outbox's files or `status.json`, at level `content` (everything leaves, redacted) with
/// message texts included.
#[test]
fn planted_secrets_reach_no_sink_log_outbox_or_status_file() {
    let scratch = Scratch::new();
    // The real fixture database (it has subagent sessions and failed turns), written to.
    let db_path = scratch.copy_fixture_db();
    let s = secrets();
    let get = |k: &str| s.iter().find(|(w, _)| *w == k).unwrap().1.clone();
    let conn = rusqlite::Connection::open(&db_path).unwrap();
    conn.execute(
        "UPDATE session SET title = 'fix login ' || ?1",
        [get("title")],
    )
    .unwrap();
    conn.execute("UPDATE todo SET content = 'rotate ' || ?1", [get("todo")])
        .unwrap();
    conn.execute(
        "UPDATE message SET data = json_set(data, '$.error.data.message', 'invalid key ' || ?1)
         WHERE json_extract(data, '$.error') IS NOT NULL",
        [get("error")],
    )
    .unwrap();
    conn.execute(
        "UPDATE session SET title = 'check (@general subagent) ' || ?1 WHERE parent_id IS NOT NULL",
        [get("child title")],
    )
    .unwrap();
    conn.execute(
        "UPDATE session SET directory = '/home/dev/' || ?1",
        [get("directory")],
    )
    .unwrap();
    let text = format!(
        "here is the key:\n-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----\n         AWS_SECRET_ACCESS_KEY={} and postgres://admin:{}@db:5432/app",
        get("message pem"),
        get("message aws"),
        get("message url")
    );
    let texts = conn
        .execute(
            "UPDATE part SET data = json_set(data, '$.text', ?1) WHERE json_extract(data, '$.type') = 'text'",
            [&text],
        )
        .unwrap();
    assert!(texts > 0);
    let errors: i64 = conn
        .query_row(
            "SELECT count(*) FROM message WHERE json_extract(data, '$.error') IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        errors > 0,
        "the generated database has no error message to plant into"
    );
    // A malformed row (a message whose data is a bare JSON string): skipped with one warning
    // that must not quote it.
    conn.execute(
        "UPDATE message SET data = json_quote(?1) WHERE id = (SELECT id FROM message ORDER BY id LIMIT 1)",
        [get("malformed row")],
    )
    .unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    let roots = root_sessions(&conn).len();
    let children: i64 = conn
        .query_row(
            "SELECT count(*) FROM session WHERE parent_id IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(children > 0);
    drop(conn);

    let config = scratch.write_config(
        "[source]\npoll_interval_ms = 100\n[export]\ndebounce_ms = 0\nfinal_after_secs = 0\n         include_messages = true\n[privacy]\nlevel = \"content\"\n",
    );
    let mut daemon = Daemon::start_local(&scratch, &config, &db_path);
    wait_for(60, "every session exported", || {
        ndjson_if_any(&scratch.local_sink()).len() >= roots
    });
    // The status file is written after the delivery it reports.
    wait_for(30, "a status file", || {
        scratch.path("data/status.json").exists()
    });
    std::thread::sleep(Duration::from_millis(1500));
    let status = daemon.terminate(Duration::from_secs(15)).0;
    assert!(status.success(), "{status:?}\n{}", daemon.output());

    assert!(
        daemon.output().contains("skipping malformed opencode row"),
        "the malformed row was not met: {}",
        daemon.output()
    );
    let records = read_ndjson(&scratch.local_sink());
    for r in &records {
        // At least the title and the directory.
        assert!(r["redactions"].as_u64().unwrap_or(0) >= 2, "{r}");
    }
    let sink = std::fs::read(scratch.local_sink()).unwrap();
    let sink_text = String::from_utf8_lossy(&sink);
    for kind in [
        "aws-access-token",
        "github-pat",
        "private-key",
        "url-credentials",
        "secret-assignment",
        "sk-api-key",
        "gitlab-pat",
        "slack-bot-token",
    ] {
        assert!(
            sink_text.contains(&format!("[redacted:{kind}]")),
            "no {kind} redaction"
        );
    }
    let mut files = vec![
        ("the sink", sink),
        ("the log", daemon.output().into_bytes()),
        (
            "status.json",
            std::fs::read(scratch.path("data/status.json")).unwrap(),
        ),
    ];
    collect_files(&scratch.path("data/queue"), &mut files);
    assert!(files.len() > 4, "no outbox files read");
    for (what, secret) in &s {
        for (name, bytes) in &files {
            assert!(
                !contains(bytes, secret.as_bytes()),
                "the {what} secret is in {name}"
            );
        }
    }
}

fn collect_files(dir: &Path, out: &mut Vec<(&'static str, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect_files(&p, out);
        } else {
            out.push(("an outbox file", std::fs::read(&p).unwrap()));
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// `preview` prints exactly the records `once` then delivers (but for `exportedAt` and
/// `revision`, the moment of sending), and leaves nothing behind but the install's path key:
/// no outbox, no sink file, no status file.
#[test]
fn preview_prints_what_once_then_sends_and_creates_no_state() {
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();
    let config = scratch.write_config("[export]\ninclude_messages = true\n");
    let out = run(command(&scratch)
        .arg("--config")
        .arg(&config)
        .arg("--db")
        .arg(&db)
        .arg("preview"));
    assert!(out.status.success(), "{out:?}");
    let names: Vec<String> = std::fs::read_dir(scratch.path("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["path.key"], "preview left state behind");
    let strip = |mut v: Value| {
        let o = v.as_object_mut().unwrap();
        o.remove("exportedAt");
        o.remove("revision");
        v
    };
    let previewed: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| strip(serde_json::from_str(l).unwrap()))
        .collect();
    assert_eq!(previewed.len(), 25);

    let out = run_once(&scratch, &config, &db);
    assert!(out.status.success(), "{out:?}");
    let mut sent: Vec<Value> = read_ndjson(&scratch.local_sink())
        .into_iter()
        .map(strip)
        .collect();
    let mut previewed = previewed;
    let key = |v: &Value| v["sessionId"].as_str().unwrap().to_string();
    sent.sort_by_key(key);
    previewed.sort_by_key(key);
    assert_eq!(previewed, sent);

    // One session by id: only its record; an unknown id is named and exits 1.
    let id = key(&sent[3]);
    let out = run(command(&scratch)
        .arg("--config")
        .arg(&config)
        .arg("--db")
        .arg(&db)
        .arg("preview")
        .arg(&id)
        .arg("ses_unknown"));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| strip(serde_json::from_str(l).unwrap()))
        .collect();
    assert_eq!(lines, [sent[3].clone()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("ses_unknown: no such session"));
}

/// Deletes a session and its subagent sessions as OpenCode does (rows cascade away).
fn delete_session(db: &Path, id: &str) {
    let w = rusqlite::Connection::open(db).unwrap();
    w.busy_timeout(Duration::from_secs(10)).unwrap();
    for sql in [
        "DELETE FROM session WHERE parent_id = ?1",
        "DELETE FROM session WHERE id = ?1",
        "DELETE FROM event_sequence WHERE aggregate_id = ?1",
    ] {
        w.execute(sql, [id]).unwrap();
    }
}

/// With the default `on_delete = "tombstone"`, at level `content`: a deleted session that was
/// exported is exported again as a tombstone (counts and names only, `deletion: "tombstone"`),
/// and one deleted before its first export (held back by open todos) is exported once, as
/// nothing but the tombstone.
#[test]
fn a_deleted_session_is_exported_as_a_tombstone_only() {
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();
    let open: Vec<String> = sql(&db)
        .prepare(
            "SELECT DISTINCT session_id FROM todo WHERE status NOT IN ('completed', 'cancelled') ORDER BY session_id",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(open.len(), 3);
    let config = scratch.write_config(
        "[source]\npoll_interval_ms = 100\n[export]\ndebounce_ms = 0\nfinal_after_secs = 1000000000\n\
         include_messages = true\n[privacy]\nlevel = \"content\"\n",
    );
    let mut daemon = Daemon::start_local(&scratch, &config, &db);
    wait_for(60, "22 exports", || {
        ndjson_if_any(&scratch.local_sink()).len() >= 22
    });
    std::thread::sleep(Duration::from_millis(1000));
    let first = read_ndjson(&scratch.local_sink());
    assert_eq!(first.len(), 22);
    let exported = first
        .iter()
        .find(|r| r["title"].is_string() && r["todos"].is_array())
        .unwrap()["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    let never = open[0].clone();
    assert!(first.iter().all(|r| r["sessionId"] != never.as_str()));
    delete_session(&db, &exported);
    delete_session(&db, &never);
    wait_for(60, "2 deletions", || {
        ndjson_if_any(&scratch.local_sink()).len() >= 24
    });
    std::thread::sleep(Duration::from_millis(1000));
    let status = daemon.terminate(Duration::from_secs(15)).0;
    assert!(status.success(), "{status:?}\n{}", daemon.output());
    let all = read_ndjson(&scratch.local_sink());
    assert_eq!(all.len(), 24, "one record per deletion, nothing else");
    let counts = allowed("counts");
    for id in [&exported, &never] {
        let records: Vec<&Value> = all
            .iter()
            .filter(|r| r["sessionId"] == id.as_str())
            .collect();
        let t = records.last().unwrap();
        assert_eq!(t["endReason"], "deleted");
        assert_eq!(t["deletion"], "tombstone");
        assert!(t["deletedAt"].is_i64());
        let extra: Vec<String> = leaves(t).difference(&counts).cloned().collect();
        assert!(extra.is_empty(), "{id}: the tombstone carries {extra:?}");
        if *id == never {
            assert_eq!(
                records.len(),
                1,
                "only the tombstone of a never-exported session"
            );
        } else {
            let before = records[0];
            for key in [
                "messageCount",
                "tokens",
                "cost",
                "todoStats",
                "models",
                "createdAt",
            ] {
                assert_eq!(t[key], before[key], "{key}");
            }
        }
    }
}

/// A loopback deployment is never reached through a proxy from the environment: with
/// `HTTP_PROXY`/`ALL_PROXY` (both cases) naming a listener, `once` and `check-config` go
/// straight to the deployment and the listener is never connected to (it would have received the
/// bearer token in clear).
#[test]
fn an_environment_proxy_never_sees_a_loopback_deployments_requests() {
    use test_support::fault_server::{FaultServer, TOKEN};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (_owner, server) = rt.block_on(FaultServer::start());
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    proxy.set_nonblocking(true).unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();
    let config = scratch.write_config(&format!("[convex]\nurl = \"{}\"\n", server.url()));
    let with_proxy = |cmd: &mut std::process::Command| {
        for var in [
            "HTTP_PROXY",
            "http_proxy",
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
        ] {
            cmd.env(var, &proxy_url);
        }
        cmd.env("OPENCODE_TELEMETRY_INGEST_TOKEN", TOKEN)
            .arg("--config")
            .arg(&config)
            .arg("--db")
            .arg(&db);
    };
    let mut once = command(&scratch);
    with_proxy(&mut once);
    let out = run(once.arg("once"));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        server.latest().len(),
        25,
        "delivered straight to the deployment"
    );
    let mut check = command(&scratch);
    with_proxy(&mut check);
    let out = run(check.arg("check-config"));
    assert!(out.status.success(), "{out:?}");
    assert!(server.whoami_count() >= 1);
    match proxy.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the proxy was connected to: {other:?}"),
    }
}

/// The daemon's own files: `data_dir` is created 0700 and the sink file 0600; a symlinked
/// `status.json.tmp` (or `status.json`) redirects no write of `run`; a symlink at the sink's
/// path is refused, never written through; a config file others may write, or another user
/// owns, is warned about.
#[cfg(unix)]
#[test]
fn the_daemons_files_are_private_and_planted_symlinks_redirect_nothing() {
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();
    let data = scratch.path("data");
    let victim = scratch.path("victim");
    std::fs::write(&victim, b"keep").unwrap();
    let config = scratch.write_config(
        "[source]\npoll_interval_ms = 100\n[export]\ndebounce_ms = 0\nfinal_after_secs = 0\n",
    );
    let out = run_once(&scratch, &config, &db);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::metadata(&data).unwrap().mode() & 0o777, 0o700);
    assert_eq!(
        std::fs::metadata(scratch.local_sink()).unwrap().mode() & 0o777,
        0o600
    );

    symlink(&victim, data.join("status.json.tmp")).unwrap();
    symlink(&victim, data.join("status.json")).unwrap();
    let mut daemon = Daemon::start_local(&scratch, &config, &db);
    wait_for(30, "a status file", || {
        std::fs::symlink_metadata(data.join("status.json")).is_ok_and(|m| m.file_type().is_file())
    });
    let status = daemon.terminate(Duration::from_secs(15)).0;
    assert!(status.success(), "{status:?}\n{}", daemon.output());
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    let json: Value =
        serde_json::from_slice(&std::fs::read(data.join("status.json")).unwrap()).unwrap();
    assert!(json.is_object());

    // A sink path that is a symlink: refused with an error, the file it points to untouched.
    std::fs::remove_file(scratch.local_sink()).unwrap();
    symlink(&victim, scratch.local_sink()).unwrap();
    std::fs::remove_dir_all(data.join("queue")).unwrap();
    let out = run(command(&scratch)
        .arg("--config")
        .arg(&config)
        .arg("--db")
        .arg(&db)
        .arg("once")
        .arg("--timeout-secs")
        .arg("1"));
    assert!(
        !out.status.success(),
        "wrote through a symlinked sink: {out:?}"
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep");

    // A config file others may write: warned about, naming it.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = run(command(&scratch)
        .arg("--config")
        .arg(&config)
        .arg("check-config")
        .arg("--offline"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "config file {} is writable by group or others",
            config.display()
        )),
        "{err}"
    );
    // Owned by someone else (only root can arrange that).
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    if std::process::Command::new("chown")
        .arg("12345")
        .arg(&config)
        .status()
        .is_ok_and(|s| s.success())
    {
        let out = run(command(&scratch)
            .arg("--config")
            .arg(&config)
            .arg("check-config")
            .arg("--offline"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("belongs to another user (uid 12345"), "{err}");
    }
}

/// A title holding terminal control sequences is printed escaped by `once`: no control byte
/// reaches the terminal, the title is still recognisable.
#[test]
fn once_prints_control_characters_of_a_title_escaped() {
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();
    let w = rusqlite::Connection::open(&db).unwrap();
    w.execute(
        "UPDATE session SET title = 'red' || char(27) || '[31m' || char(27) || ']0;pwned' || char(7) || char(10) || 'forged line'",
        [],
    )
    .unwrap();
    drop(w);
    let config = scratch.write_config("[privacy]\nlevel = \"content\"\n");
    let out = run_once(&scratch, &config, &db);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        !stdout.bytes().any(|b| b == 0x1b || b == 0x07),
        "a control byte was printed"
    );
    let shown = r"red\u{1b}[31m\u{1b}]0;pwned\u{7}\nforged line";
    assert_eq!(stdout.matches(shown).count(), 25, "{stdout}");
    assert!(!stdout.lines().any(|l| l.starts_with("forged line")));
}
