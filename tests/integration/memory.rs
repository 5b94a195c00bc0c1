//! Bounded memory, measured on the real binary as the kernel counts it: `once`'s peak RSS from
//! `wait4`, `run`'s from `/proc/<pid>/status` (`VmHWM`) once every session is delivered. The
//! history is generated from the fixture's real rows (`test_support::gen_db`) and is larger
//! than one chunk of the first pass many times over, so a pass that held the whole history (or
//! committed it in one outbox transaction, as before chunks: 406 MB for 10,000 sessions) fails.
//! The figures at 10,000 and 50,000 sessions are the source bench's (README "Speed").
//!
//! The tests run the debug build, whose code alone is ~145 MB on disk: the bound is 64 MiB
//! plus the binary's file-backed resident pages (`RssFile` of the running daemon, about
//! 10–15 MiB more than the release build's), so it bounds what the program allocates, as the
//! release figures do.

use std::time::Duration;

use test_support::gen_db::GenDb;
use test_support::measure;

use crate::support::daemon::Daemon;
use crate::support::{command, read_ndjson, Scratch};

/// The bound the issue sets and the README states (the unit's `MemoryMax` leaves room above).
const LIMIT_BYTES: u64 = 64 << 20;

/// Sessions in the generated history: 20 chunks of the first pass.
const SESSIONS: usize = 4_000;

#[test]
#[ignore = "on a loaded machine (the suite's parallel tests) once peaked at 250 MiB: cause not found yet (#11); run alone with --ignored"]
fn once_and_run_stay_under_64_mib_on_a_history_of_4000_sessions() {
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
        peak <= limit,
        "run peaked at {} MiB on {SESSIONS} sessions (limit 64 MiB + {} MiB of mapped code; now {} MiB)",
        mib(peak),
        mib(code),
        mib(rss)
    );
}
