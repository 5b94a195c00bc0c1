//! Bounded memory, measured on the real binary as the kernel counts it: `once`'s peak RSS from
//! `wait4`, `run`'s from `/proc/<pid>/status` (`VmHWM`) once every session is delivered. The
//! history is generated from the fixture's real rows (`test_support::gen_db`) and is larger
//! than one chunk of the first pass many times over, so a pass that held the whole history (or
//! committed it in one outbox transaction, as before chunks: 406 MB for 10,000 sessions) fails.
//! The figures at 10,000 and 50,000 sessions are the source bench's (README "Speed").
//!
//! `once` is measured through `test_support::measure::run`, which starts it from a small
//! launcher: a child's `ru_maxrss` otherwise includes the test harness's own resident set at
//! the fork (which, with other tests running in parallel, once read 250 MiB for a `once` that
//! used 50).
//!
//! The tests run the debug build, whose code alone is ~145 MB on disk: the bound is 64 MiB
//! plus the binary's file-backed resident pages (`RssFile` of the running daemon, about
//! 10–15 MiB more than the release build's), so it bounds what the program allocates, as the
//! release figures do.

use std::time::Duration;

use test_support::fault_server::{FaultServer, Mode, TOKEN};
use test_support::gen_db::GenDb;
use test_support::measure;

use crate::support::daemon::Daemon;
use crate::support::{command, read_ndjson, Scratch};

/// The bound the issue sets and the README states (the unit's `MemoryMax` leaves room above).
const LIMIT_BYTES: u64 = 64 << 20;

/// Sessions in the generated history: 25 chunks of the first pass, and the backlog of queued
/// records the issue names.
const SESSIONS: usize = 5_000;

#[test]
fn once_run_and_a_drain_stay_under_64_mib_on_a_history_of_5000_sessions() {
    let scratch = Scratch::new();
    let db = scratch.path("oc/opencode.db");
    let roots = GenDb::create(&db, SESSIONS).session_ids().len();
    let config = scratch.write_config("");

    let mut once = command(&scratch);
    once.arg("--config")
        .arg(&config)
        .arg("--db")
        .arg(&db)
        .arg("once")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let used = measure::run(&mut once);
    assert!(used.status.success(), "once failed: {:?}", used.status);
    let delivered = read_ndjson(&scratch.local_sink()).len();
    assert!(
        delivered >= roots,
        "once delivered {delivered} of {roots} sessions"
    );
    // Again, on the same data directory: the outbox's verification at open and the listing
    // read every stored state, which must not cost memory in proportion to it either.
    let again = measure::run(&mut once);
    assert!(again.status.success(), "once failed: {:?}", again.status);
    assert_eq!(
        read_ndjson(&scratch.local_sink()).len(),
        delivered,
        "nothing new"
    );

    // A backlog: every record queued for a deployment that refuses connections (`once` gives
    // up after its timeout, exit 1, everything kept for it), then drained into it once it is
    // back, by a second `once`.
    let deployment = FaultServer::in_background(Mode::Refuse);
    let offline = Scratch::new();
    let down = offline.write_config(&format!(
        "[convex]\nurl = \"{}\"\n",
        deployment.handle.url()
    ));
    let queue_then_drain = |timeout: &str| {
        measure::run(
            command(&offline)
                .env("OPENCODE_TELEMETRY_INGEST_TOKEN", TOKEN)
                .arg("--config")
                .arg(&down)
                .arg("--db")
                .arg(&db)
                .arg("once")
                .arg("--timeout-secs")
                .arg(timeout)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null()),
        )
    };
    let queued = queue_then_drain("1");
    assert_eq!(queued.status.code(), Some(1), "nothing could be delivered");
    deployment.set_mode(Mode::Normal);
    let drained = queue_then_drain("120");
    assert!(
        drained.status.success(),
        "drain failed: {:?}",
        drained.status
    );
    assert_eq!(
        deployment.handle.latest().len(),
        delivered,
        "every queued record"
    );
    drop(deployment);

    // run, on a fresh data directory: the first pass and delivery.
    let fresh = Scratch::new();
    // Open todos wait final_after_secs in run (once flushes them): export at once here.
    let config = fresh.write_config("[export]\ndebounce_ms = 0\nfinal_after_secs = 0\n");
    let mut daemon = Daemon::start_local(&fresh, &config, &db);
    crate::support::wait_for(300, "run to deliver every session", || {
        std::fs::read(fresh.local_sink()).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
            >= delivered
    });
    std::thread::sleep(Duration::from_secs(2));
    let (rss, peak) = measure::rss_and_peak(daemon.pid());
    let code = measure::status_bytes(daemon.pid(), "RssFile");
    daemon.terminate(Duration::from_secs(30));
    assert!(peak > 0 && code > 0, "no VmHWM / RssFile for the daemon");
    let limit = LIMIT_BYTES + code;
    let mib = |b: u64| b >> 20;
    assert!(
        used.max_rss_bytes <= limit,
        "once peaked at {} MiB on {SESSIONS} sessions (limit 64 MiB + {} MiB of mapped code)",
        mib(used.max_rss_bytes),
        mib(code)
    );
    assert!(
        drained.max_rss_bytes <= limit,
        "draining {delivered} queued records peaked at {} MiB (limit 64 MiB + {} MiB of mapped code)",
        mib(drained.max_rss_bytes),
        mib(code)
    );
    assert!(
        again.max_rss_bytes <= limit,
        "once over the stored state of {SESSIONS} sessions peaked at {} MiB (limit 64 MiB + {} MiB of mapped code)",
        mib(again.max_rss_bytes),
        mib(code)
    );
    assert!(
        peak <= limit,
        "run peaked at {} MiB on {SESSIONS} sessions (limit 64 MiB + {} MiB of mapped code; now {} MiB)",
        mib(peak),
        mib(code),
        mib(rss)
    );
}

/// Bytes of content in each large part, and how many parts: 240 MiB in one session, each part
/// larger than the limit, so reading any one part whole would fail the bound.
const LARGE_PART_BYTES: usize = 60 << 20;
const LARGE_PARTS: usize = 4;

/// A session whose parts hold 240 MiB (a `bash` output, a text, a file attachment, an edit's
/// before and after) is exported in bounded memory by `once` and by `run`'s first pass, with
/// message texts on, and its record counts them as SQLite's own JSON functions read the same
/// rows: every tool call, and the message text cut to `max_message_chars` with the exact
/// number of characters left out.
#[test]
fn a_session_of_240_mib_of_content_is_exported_in_64_mib() {
    let scratch = Scratch::new();
    let db = scratch.path("oc/opencode.db");
    let mut generated = GenDb::create(&db, 3);
    let session = generated.session_ids()[1].clone();
    let message = generated.add_large_parts(&session, LARGE_PART_BYTES, LARGE_PARTS);
    // Ground truth, from SQLite's JSON functions: the session's tool calls by name, and the
    // message's text (its non-synthetic text parts joined by a blank line).
    let conn = generated.conn();
    let mut calls = std::collections::BTreeMap::<String, u64>::new();
    let mut stmt = conn
        .prepare(
            "SELECT json_extract(data, '$.tool'), COUNT(*) FROM part WHERE session_id = ?1 \
             AND json_extract(data, '$.type') = 'tool' GROUP BY 1",
        )
        .unwrap();
    for row in stmt
        .query_map([&session], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?))
        })
        .unwrap()
    {
        let (tool, n) = row.unwrap();
        calls.insert(tool, n);
    }
    drop(stmt);
    let texts: Vec<String> = conn
        .prepare(
            "SELECT json_extract(data, '$.text') FROM part WHERE message_id = ?1 \
             AND json_extract(data, '$.type') = 'text' \
             AND COALESCE(json_extract(data, '$.synthetic'), 0) = 0 ORDER BY id",
        )
        .unwrap()
        .query_map([&message], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .filter(|t| !t.is_empty())
        .collect();
    drop(generated);
    let whole = texts.join("\n\n");
    let max = 4000;
    let want_text = format!(
        "{}… [truncated by opencode-telemetry: {} more chars]",
        whole.chars().take(max).collect::<String>(),
        whole.chars().count() - max
    );
    drop(whole);
    let extra = format!("[export]\ninclude_messages = true\nmax_message_chars = {max}\ndebounce_ms = 0\nfinal_after_secs = 0\n[privacy]\nlevel = \"content\"\n");

    let check_record = |sink: &std::path::Path, who: &str| {
        let records = read_ndjson(sink);
        let record = records
            .iter()
            .rev()
            .find(|r| r["sessionId"] == session.as_str())
            .unwrap_or_else(|| panic!("{who}: no record of {session}"));
        let got: std::collections::BTreeMap<String, u64> = record["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["name"].as_str().unwrap().to_string(),
                    t["calls"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, calls, "{who}: tool calls");
        let text = record["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == message.as_str())
            .and_then(|m| m["text"].as_str())
            .unwrap_or_else(|| panic!("{who}: no text for {message}"));
        assert!(
            text == want_text,
            "{who}: the message text differs (len {} vs {})",
            text.len(),
            want_text.len()
        );
    };

    let config = scratch.write_config(&extra);
    let mut once = command(&scratch);
    once.arg("--config")
        .arg(&config)
        .arg("--db")
        .arg(&db)
        .arg("once")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let used = measure::run(&mut once);
    assert!(used.status.success(), "once failed: {:?}", used.status);
    check_record(&scratch.local_sink(), "once");

    let fresh = Scratch::new();
    let config = fresh.write_config(&extra);
    let mut daemon = Daemon::start_local(&fresh, &config, &db);
    crate::support::wait_for(300, "run to deliver the large session", || {
        std::fs::read_to_string(fresh.local_sink()).is_ok_and(|s| s.contains(session.as_str()))
    });
    std::thread::sleep(Duration::from_secs(1));
    let (rss, peak) = measure::rss_and_peak(daemon.pid());
    let code = measure::status_bytes(daemon.pid(), "RssFile");
    daemon.terminate(Duration::from_secs(30));
    check_record(&fresh.local_sink(), "run");
    let limit = LIMIT_BYTES + code;
    let mib = |b: u64| b >> 20;
    assert!(
        used.max_rss_bytes <= limit,
        "once peaked at {} MiB (limit 64 MiB + {} MiB of mapped code)",
        mib(used.max_rss_bytes),
        mib(code)
    );
    assert!(
        peak <= limit,
        "run peaked at {} MiB (limit 64 MiB + {} MiB of mapped code; now {} MiB)",
        mib(peak),
        mib(code),
        mib(rss)
    );
}
