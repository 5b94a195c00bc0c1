//! The daemon as a service, as a process: SIGINT mid-drain (the SIGTERM cases are in
//! `delivery_faults`), SIGHUP with a valid and an invalid config, log formats, progress bars
//! only on a terminal, and the ingest token absent from every output and file while the daemon
//! goes through its error paths.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::daemon::Daemon;
use crate::support::fault_server::{FaultHandle, FaultServer, Mode, TOKEN};
use crate::support::gen_db::GenDb;
use crate::support::*;

/// Runs a test body with a hard time limit (children are killed when the body is dropped).
async fn bounded(limit: Duration, body: impl std::future::Future<Output = ()>) {
    if tokio::time::timeout(limit, body).await.is_err() {
        panic!("the test exceeded its hard limit of {limit:?}");
    }
}

/// Polls `f` every 20 ms until it holds, or panics after `limit` naming `what` (with `log`).
async fn until(limit: Duration, what: &str, log: &Path, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        if Instant::now() > deadline {
            panic!(
                "timed out after {limit:?} waiting for {what}\n--- log ---\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One test's world: a generated database, a config file in `<scratch>/etc` and a data dir.
struct World {
    scratch: Scratch,
    db: PathBuf,
    ids: Vec<String>,
    writer: GenDb,
    config: PathBuf,
    log: PathBuf,
}

impl World {
    fn new(sessions: usize) -> World {
        let scratch = Scratch::new();
        let writer = GenDb::create(&scratch.path("oc/opencode.db"), sessions);
        std::fs::create_dir_all(scratch.path("etc")).unwrap();
        World {
            db: writer.path.clone(),
            ids: writer.session_ids().to_vec(),
            writer,
            config: scratch.path("etc/config.toml"),
            log: scratch.path("daemon.log"),
            scratch,
        }
    }

    fn data(&self) -> PathBuf {
        self.scratch.path("data")
    }

    /// Writes the config: fast polling, immediate exports, the Convex stand-in at `url`, and
    /// `convex_extra` / `service_extra` lines in their tables.
    fn write_config(&self, url: &str, convex_extra: &str, service_extra: &str) {
        let text = format!(
            "data_dir = \"{data}\"\n\
             [source]\ndb_path = \"{db}\"\npoll_interval_ms = 50\n\
             [export]\ndebounce_ms = 0\nfinal_after_secs = 0\n\
             [convex]\nurl = \"{url}\"\nrequest_timeout_secs = 5\ninitial_backoff_ms = 20\n\
             max_backoff_secs = 1\n{convex_extra}\n\
             [service]\nshutdown_grace_secs = 2\n{service_extra}\n",
            data = self.data().display(),
            db = self.db.display(),
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// Starts `run` without `RUST_LOG`, so `service.log_level` decides.
    fn start(&self, token: &str) -> Daemon {
        let mut cmd = command(&self.scratch);
        cmd.env_remove("RUST_LOG")
            .env("OPENCODE_TELEMETRY_INGEST_TOKEN", token)
            .arg("--config")
            .arg(&self.config)
            .arg("run");
        Daemon::spawn(cmd, &self.log)
    }

    /// Runs a CLI subcommand against the config, the token in the environment.
    fn cli(&self, token: &str, args: &[&str]) -> Output {
        tokio::task::block_in_place(|| {
            run(command(&self.scratch)
                .env("OPENCODE_TELEMETRY_INGEST_TOKEN", token)
                .arg("--config")
                .arg(&self.config)
                .args(args))
        })
    }

    /// `status --json`, asserting exit 0.
    fn status_json(&self) -> Value {
        let out = self.cli(TOKEN, &["status", "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
    }

    /// The daemon's `status.json` in `data`.
    fn status_file(&self, data: &Path) -> Option<Value> {
        serde_json::from_slice(&std::fs::read(data.join("status.json")).ok()?).ok()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// stdout and stderr of a finished command.
fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// SIGINT while a backlog drains through a slow server: exit 0 within the grace period, the
/// records not acknowledged are still pending (pending + stored = all), and the next start
/// delivers every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_mid_drain_exits_0_in_the_grace_period_and_loses_nothing() {
    bounded(Duration::from_secs(60), async {
        let w = World::new(60);
        let (_server, server) = FaultServer::start().await;
        w.write_config(&server.url(), "batch_size = 10", "");
        server
            .set_mode(Mode::Delay(Duration::from_millis(400)))
            .await;
        let mut d = w.start(TOKEN);
        until(
            Duration::from_secs(20),
            "a first delivered batch",
            &w.log,
            || !server.latest().is_empty(),
        )
        .await;
        let t = Instant::now();
        d.signal("INT");
        let exit = d
            .wait_for_exit(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no exit 5 s after SIGINT\n{}", d.output()));
        let took = t.elapsed();
        assert!(exit.success(), "{exit}\n{}", d.output());
        assert!(took <= Duration::from_millis(2500), "{took:?}");
        assert!(d.output().contains("signal=\"SIGINT\""), "{}", d.output());

        let stored = server.latest().len() as u64;
        assert!(stored < 60, "SIGINT came after the drain ({stored} stored)");
        let status = w.status_json();
        assert_eq!(status["daemon"]["running"], false, "{status}");
        let pending = status["outbox"]["pendingCount"].as_u64().unwrap();
        assert_eq!(status["outbox"]["deadCount"], 0, "{status}");
        // A batch the server stored but whose answer the daemon did not wait for stays pending.
        assert!(
            pending == 60 - stored || pending == 60 - stored + 10,
            "pending {pending} with {stored} stored"
        );

        server.set_mode(Mode::Normal).await;
        let mut d = w.start(TOKEN);
        until(
            Duration::from_secs(20),
            "all 60 sessions stored",
            &w.log,
            || server.latest().len() == 60,
        )
        .await;
        let (exit, _) = d.terminate(Duration::from_secs(10));
        assert!(exit.success());
        assert_eq!(w.status_json()["outbox"]["pendingCount"], 0);
        let mut got: Vec<String> = server.latest().keys().cloned().collect();
        let mut want = w.ids.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want);
    })
    .await;
}

/// SIGHUP with a valid new config: the records queued while the old deployment failed are all
/// delivered to the new one, the new log level applies (DEBUG lines appear), each change is
/// logged, a restart-only key is reported and kept, and `status` shows the reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_valid_config_and_keeps_the_queue() {
    bounded(Duration::from_secs(60), async {
        let w = World::new(30);
        let (_old_server, old) = FaultServer::start().await;
        let (_new_server, new) = FaultServer::start().await;
        old.set_mode(Mode::status(503)).await;
        w.write_config(&old.url(), "", "log_level = \"info\"");
        let mut d = w.start(TOKEN);
        until(Duration::from_secs(20), "30 records queued", &w.log, || {
            w.status_file(&w.data())
                .is_some_and(|s| s["pendingCount"] == 30)
                && old.request_count() >= 2
        })
        .await;
        let before = d.output();
        assert!(!before.contains("DEBUG"), "{before}");
        assert!(!before.contains('\u{1b}'), "colour codes in a log file");

        // New deployment URL, debug logs, a bigger batch; `data_dir` needs a restart.
        let text = std::fs::read_to_string(&w.config)
            .unwrap()
            .replace(&old.url(), &new.url())
            .replace("log_level = \"info\"", "log_level = \"debug\"")
            .replace(
                "request_timeout_secs = 5",
                "request_timeout_secs = 5\nbatch_size = 7",
            )
            .replace(
                &format!("data_dir = \"{}\"", w.data().display()),
                &format!("data_dir = \"{}\"", w.scratch.path("elsewhere").display()),
            );
        std::fs::write(&w.config, text).unwrap();
        d.signal("HUP");
        until(
            Duration::from_secs(20),
            "all 30 at the new URL",
            &w.log,
            || new.latest().len() == 30,
        )
        .await;
        let old_requests = old.request_count();
        let out = d.output();
        assert!(out.contains("configuration reloaded"), "{out}");
        assert!(
            out.contains(&format!(
                "convex.url: \"{}\" → \"{}\"",
                old.url(),
                new.url()
            )),
            "{out}"
        );
        let default_batch = opencode_telemetry::config::ConvexConfig::default().batch_size;
        assert!(
            out.contains(&format!("convex.batch_size: {default_batch} → 7")),
            "{out}"
        );
        assert!(
            out.contains("service.log_level: \"info\" → \"debug\""),
            "{out}"
        );
        let restart_line = out
            .lines()
            .find(|l| l.contains("needs a restart"))
            .unwrap_or_else(|| panic!("no restart warning\n{out}"));
        assert!(
            restart_line.contains("WARN") && restart_line.contains("data_dir"),
            "{restart_line}"
        );
        assert!(
            out.contains("DEBUG"),
            "the new log level did not apply\n{out}"
        );
        // Batches of the new size reached the new deployment.
        assert!(
            new.requests().iter().all(|r| r.session_ids.len() <= 7),
            "batch_size 7 not applied"
        );
        assert!(!w.scratch.path("elsewhere").exists());

        // The old data dir stays in use: its status file describes the reload.
        let sink = format!(
            "local store {}, convex {}",
            w.data().join("sessions.db").display(),
            new.url()
        );
        until(
            Duration::from_secs(10),
            "the reload in the status file",
            &w.log,
            || {
                w.status_file(&w.data()).is_some_and(|s| {
                    s["daemon"]["lastReload"]["applied"] == true && s["daemon"]["sink"] == sink
                })
            },
        )
        .await;
        until(Duration::from_secs(10), "an empty outbox", &w.log, || {
            w.status_file(&w.data())
                .is_some_and(|s| s["pendingCount"] == 0)
        })
        .await;
        let (exit, _) = d.terminate(Duration::from_secs(10));
        assert!(exit.success(), "{exit}");
        assert_eq!(
            old.request_count(),
            old_requests,
            "the old URL was used after the reload"
        );
    })
    .await;
}

/// SIGHUP with an invalid config (an unknown key, then a bad value): an ERROR names the key and
/// the file, the daemon keeps running with the old config, still delivers new versions, and
/// `status` shows the rejection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_an_invalid_config_keeps_the_running_one() {
    bounded(Duration::from_secs(60), async {
        let mut w = World::new(5);
        let (_server, server) = FaultServer::start().await;
        w.write_config(&server.url(), "", "");
        let good = std::fs::read_to_string(&w.config).unwrap();
        let mut d = w.start(TOKEN);
        until(Duration::from_secs(20), "5 sessions stored", &w.log, || {
            server.latest().len() == 5
        })
        .await;

        for (bad, key) in [
            (
                good.replace("[convex]\n", "[convex]\nbatch_sise = 5\n"),
                "batch_sise",
            ),
            (
                good.replace("poll_interval_ms = 50", "poll_interval_ms = 0"),
                "source.poll_interval_ms",
            ),
        ] {
            std::fs::write(&w.config, bad).unwrap();
            let errors_before = d.output().matches("ERROR").count();
            d.signal("HUP");
            until(Duration::from_secs(10), "the reload error", &w.log, || {
                d.output().matches("ERROR").count() > errors_before
            })
            .await;
            let out = d.output();
            let line = out
                .lines()
                .rfind(|l| l.contains("ERROR"))
                .unwrap()
                .to_string();
            assert!(line.contains(key), "{line}");
            assert!(line.contains(&w.config.display().to_string()), "{line}");
            assert!(d.try_wait().is_none(), "the daemon exited\n{out}");
        }
        // `status` (with the file fixed again) reads the running daemon's status file.
        std::fs::write(&w.config, &good).unwrap();
        until(
            Duration::from_secs(10),
            "the rejection in the status file",
            &w.log,
            || {
                w.status_file(&w.data())
                    .is_some_and(|s| s["daemon"]["lastReload"]["applied"] == false)
            },
        )
        .await;
        let status = w.status_json();
        assert_eq!(status["daemon"]["running"], true, "{status}");
        assert_eq!(status["daemon"]["lastReload"]["applied"], false, "{status}");
        assert!(status["daemon"]["lastReload"]["message"]
            .as_str()
            .unwrap()
            .contains("source.poll_interval_ms"));
        let human = text(&w.cli(TOKEN, &["status"]));
        assert!(human.contains("last reload:     REJECTED"), "{human}");

        // Still polling with the old settings and still delivering.
        let id = w.ids[2].clone();
        let updated = w.writer.write_step(&id);
        until(Duration::from_secs(20), "the new version", &w.log, || {
            server.latest()[&id]["updatedAt"].as_i64() >= Some(updated)
        })
        .await;
        let (exit, _) = d.terminate(Duration::from_secs(10));
        assert!(exit.success(), "{exit}");
    })
    .await;
}

/// The three log formats: journald style under `JOURNAL_STREAM` (sd-daemon `<N>` priority
/// prefixes, no timestamp), timestamped text otherwise (no colour codes into a file), JSON lines
/// with `OPENCODE_TELEMETRY_LOG_FORMAT`.
#[test]
fn log_formats_journald_text_and_json() {
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();
    let config = scratch.write_config("[source]\npoll_interval_ms = 50\n");
    // Stops the daemon once its output holds `until` (the first pass, which meets the bad row,
    // may come after "running" on a loaded machine).
    let start = |env: &[(&str, &str)], log: &str, until: &str| {
        let mut cmd = command(&scratch);
        cmd.env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.arg("--config")
            .arg(&config)
            .arg("--db")
            .arg(&db)
            .arg("run");
        let mut d = Daemon::spawn(cmd, &scratch.path(log));
        wait_for(20, until, || d.output().contains(until));
        let (exit, _) = d.terminate(Duration::from_secs(10));
        assert!(exit.success(), "{}", d.output());
        d.output()
    };

    // One malformed message row: a WARN ("skipping malformed opencode row").
    writer(&db)
        .execute_batch(
            "UPDATE message SET data = '{bad' WHERE rowid = (SELECT MIN(rowid) FROM message)",
        )
        .unwrap();
    let journald = start(
        &[("JOURNAL_STREAM", "8:12345")],
        "journald.log",
        "skipping malformed opencode row",
    );
    // sd-daemon(3) priority prefixes, which journald reads off every line of the stream.
    let first = journald.lines().next().unwrap();
    assert!(
        first.starts_with("<6>") && first.contains("INFO starting"),
        "{first}"
    );
    let warn = journald
        .lines()
        .find(|l| l.contains("skipping malformed opencode row"))
        .unwrap_or_else(|| panic!("no warning:\n{journald}"));
    assert!(warn.starts_with("<4>") && warn.contains("WARN"), "{warn}");
    for line in journald.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            ["<3>", "<4>", "<6>", "<7>"]
                .iter()
                .any(|p| line.starts_with(p)),
            "a line without a priority prefix: {line}"
        );
    }
    assert!(!journald.contains('\u{1b}'), "{journald}");

    let text = start(&[], "text.log", "running");
    let first = text.lines().next().unwrap();
    assert!(
        first.len() > 20 && first.as_bytes()[4] == b'-' && first.as_bytes()[10] == b'T',
        "no timestamp: {first}"
    );
    assert!(
        first.contains("INFO") && first.contains("starting"),
        "{first}"
    );
    assert!(!text.contains('\u{1b}'), "colour codes in a file: {text}");

    let json = start(
        &[("OPENCODE_TELEMETRY_LOG_FORMAT", "json")],
        "json.log",
        "running",
    );
    let lines: Vec<Value> = json
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.len() >= 3, "{json}");
    assert_eq!(lines[0]["level"], "INFO");
    assert_eq!(lines[0]["fields"]["message"], "starting");
    assert!(lines
        .iter()
        .any(|l| l["fields"]["message"] == "shutdown complete"));

    // A bad value of the environment override is a config error naming the key.
    let out = run(command(&scratch)
        .env("OPENCODE_TELEMETRY_LOG_FORMAT", "yaml")
        .arg("--config")
        .arg(&config)
        .arg("check-config"));
    assert_eq!(out.status.code(), Some(78), "{}", text_of(&out));
    assert!(
        text_of(&out).contains("service.log_format"),
        "{}",
        text_of(&out)
    );
}

fn text_of(out: &Output) -> String {
    text(out)
}

/// `once` draws its progress bars only on a terminal: through a pseudo-terminal (`script`) the
/// bar's label shows; into a pipe there is no bar and no escape code at all.
#[test]
fn progress_bars_only_on_a_terminal() {
    let scratch = Scratch::new();
    let db = GenDb::create(&scratch.path("oc/opencode.db"), 400);
    let config = scratch.write_config("");
    let out = run(command(&scratch)
        .arg("--config")
        .arg(&config)
        .arg("--db")
        .arg(&db.path)
        .arg("once"));
    assert!(out.status.success(), "{}", text(&out));
    let piped = text(&out);
    assert!(!piped.contains('\u{1b}'), "escape codes without a terminal");
    assert!(!piped.contains("reading sessions"), "{piped}");
    assert_eq!(read_ndjson(&scratch.local_sink()).len(), 400);

    // The same through a pseudo-terminal (util-linux `script`; BSD `script` on macOS takes
    // other arguments), into a fresh data dir.
    if !cfg!(target_os = "linux") {
        return;
    }
    let config2 = scratch.path("config2.toml");
    std::fs::write(
        &config2,
        format!("data_dir = \"{}\"\n", scratch.path("data2").display()),
    )
    .unwrap();
    let shell = format!(
        "{} --config {} --db {} once",
        bin().display(),
        config2.display(),
        db.path.display()
    );
    let out = run(&mut on_a_terminal(&scratch, &shell, &[]));
    let tty = text(&out);
    assert!(out.status.success(), "{tty}");
    assert!(
        tty.contains("reading sessions") || tty.contains("delivering"),
        "no progress bar on a terminal: {tty}"
    );
}

/// The ingest token never appears in any output or file while the daemon goes through its
/// error paths: a wrong token (the ingest action's 401 and an injected 401), HTTP 500, a 400
/// whose message echoes the token, connection refused, `status`, `status --json`,
/// `queue list`, an invalid config on SIGHUP and at start with the token on the broken line,
/// `check-config` on a world-readable file (the permission warning), `once` refused, DEBUG
/// logs as JSON and TRACE logs as text. The server is checked to have received the token, so
/// its absence elsewhere means something.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_token_appears_in_no_output_and_no_file() {
    const SECRET: &str = "tok-NEVER-LOG-7f3a9c2e51d04b86";
    bounded(Duration::from_secs(90), async {
        let w = World::new(8);
        let (_server, server) = FaultServer::start().await;
        server.set_token(Some("the-deployment-expects-another"));
        let token_line = format!("ingest_token = \"{SECRET}\"");
        w.write_config(
            &server.url(),
            &format!("{token_line}\nbatch_size = 4"),
            "log_level = \"debug\"\nlog_format = \"json\"",
        );
        set_mode_bits(&w.config, 0o644);
        let mut outputs: Vec<(String, String)> = Vec::new();
        let mut keep = |what: &str, out: String| outputs.push((what.to_string(), out));

        let check = w.cli(SECRET, &["check-config"]);
        assert!(check.status.success(), "{}", text(&check));
        let check_text = text(&check);
        assert!(
            check_text.contains(&format!("chmod 600 {}", w.config.display())),
            "no permission warning: {check_text}"
        );
        keep("check-config", check_text);

        let mut d = w.start(SECRET);
        // 1. The deployment refuses the token (the ingest's UNAUTHORIZED).
        until(
            Duration::from_secs(20),
            "the unauthorized error",
            &w.log,
            || d.output().contains("refused the ingest token"),
        )
        .await;
        assert!(
            d.output().contains("chmod 600"),
            "no startup permission warning"
        );
        // 2. HTTP 401, 3. HTTP 500.
        for (mode, label) in [
            (Mode::status(401), "status 401"),
            (Mode::status(500), "status 500"),
        ] {
            let seen = count_mode(&server, label);
            server.set_mode(mode).await;
            until(Duration::from_secs(20), label, &w.log, || {
                count_mode(&server, label) > seen
            })
            .await;
        }
        // 4. Connection refused.
        let error_before = w.status_file(&w.data()).unwrap()["lastError"].clone();
        server.set_mode(Mode::Refuse).await;
        until(
            Duration::from_secs(20),
            "a connection error",
            &w.log,
            || {
                w.status_file(&w.data())
                    .is_some_and(|s| s["lastError"] != error_before)
            },
        )
        .await;
        // 5. A 400 from the ingest action echoing the token (as a validation message quoting
        // values would): every record goes to the dead letters with that reason.
        let echo = format!(
            "ArgumentValidationError: Object is missing the required field `x`.\n\
             Path: .sessions[0]\nValue: {{token: \"{SECRET}\", sessions: [...]}}"
        );
        server
            .set_mode(Mode::ingest_error(400, "BAD_REQUEST", &echo))
            .await;
        until(Duration::from_secs(20), "a dead letter", &w.log, || {
            dead_count(&w) > 0
        })
        .await;
        keep("status (running)", text(&w.cli(SECRET, &["status"])));
        keep(
            "status --json (running)",
            text(&w.cli(SECRET, &["status", "--json"])),
        );
        keep(
            "queue list (locked)",
            text(&w.cli(SECRET, &["queue", "list"])),
        );

        // 6. SIGHUP with the token on a broken line.
        let good = std::fs::read_to_string(&w.config).unwrap();
        std::fs::write(
            &w.config,
            good.replace(&token_line, &format!("ingest_token = \"{SECRET}")),
        )
        .unwrap();
        d.signal("HUP");
        until(
            Duration::from_secs(10),
            "the rejected reload",
            &w.log,
            || d.output().contains("is invalid; keeping the running one"),
        )
        .await;
        keep("status after the reload", text(&w.cli(TOKEN, &["status"])));
        let (exit, _) = d.terminate(Duration::from_secs(10));
        assert!(exit.success());

        // 7. At start, the same broken file: exit 78.
        let out = w.cli(SECRET, &["run"]);
        assert_eq!(out.status.code(), Some(78), "{}", text(&out));
        keep("run with a broken config", text(&out));
        std::fs::write(&w.config, &good).unwrap();
        keep("queue list", text(&w.cli(SECRET, &["queue", "list"])));
        keep(
            "status (stopped)",
            text(&w.cli(SECRET, &["status", "--json"])),
        );

        // 8. `once` refused by the deployment (the dead letters of step 5 sent again).
        server.set_mode(Mode::Normal).await;
        keep(
            "queue retry-dead",
            text(&w.cli(SECRET, &["queue", "retry-dead"])),
        );
        let out = w.cli(
            SECRET,
            &[
                "--db",
                w.db.to_str().unwrap(),
                "once",
                "--timeout-secs",
                "5",
            ],
        );
        assert!(!out.status.success(), "{}", text(&out));
        keep("once refused", text(&out));

        // 9. TRACE as text while the token is accepted: everything goes out.
        server.set_token(Some(SECRET));
        std::fs::write(
            &w.config,
            good.replace("log_level = \"debug\"", "log_level = \"trace\"")
                .replace("log_format = \"json\"", "log_format = \"text\""),
        )
        .unwrap();
        let mut d = w.start(SECRET);
        until(
            Duration::from_secs(20),
            "delivery with the right token",
            &w.log,
            || server.latest().len() == 8,
        )
        .await;
        let (exit, _) = d.terminate(Duration::from_secs(10));
        assert!(exit.success());

        assert!(
            server
                .requests()
                .iter()
                .any(|r| r.authorization.as_deref() == Some(&format!("Bearer {SECRET}"))),
            "the daemon never sent the token, so its absence proves nothing"
        );
        keep("daemon log", w.log_text());
        for (what, out) in &outputs {
            assert!(!out.contains(SECRET), "the token appears in {what}:\n{out}");
        }
        // Every file the daemon wrote (status file, outbox, local files), configs excepted.
        for file in files_under(w.scratch.dir.path()) {
            if file.starts_with(w.scratch.path("etc")) {
                continue;
            }
            let bytes = std::fs::read(&file).unwrap_or_default();
            assert!(
                !bytes
                    .windows(SECRET.len())
                    .any(|win| win == SECRET.as_bytes()),
                "the token appears in {}",
                file.display()
            );
        }
    })
    .await;
}

fn count_mode(server: &FaultHandle, label: &str) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.mode == label && r.status.is_some())
        .count()
}

fn dead_count(w: &World) -> usize {
    w.status_file(&w.data())
        .and_then(|s| s["deadCount"].as_u64())
        .unwrap_or(0) as usize
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn set_mode_bits(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `status --check` for scripts (#20): `ok` and exit 0 while the daemon runs and nothing is
/// wrong; `unhealthy: <reasons>` and exit 1 before it started and once it stopped (the other
/// reasons: `cmd::status::tests::check_reports_each_problem_and_nothing_when_healthy`).
#[test]
fn status_check_says_ok_or_why_not_with_its_exit_status() {
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();
    let config = scratch.write_config("[source]\npoll_interval_ms = 50\n");
    let check = || {
        let out = run(command(&scratch)
            .arg("--config")
            .arg(&config)
            .args(["status", "--check"]));
        (out.status.code(), text(&out))
    };
    let (code, out) = check();
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(out.trim(), "unhealthy: the daemon is not running");

    let mut d = Daemon::start_local(&scratch, &config, &db);
    wait_for(20, "the first pass", || {
        ndjson_if_any(&scratch.local_sink()).len() == 25
    });
    wait_for(10, "status ok", || check() == (Some(0), "ok\n".to_string()));
    assert!(d.terminate(Duration::from_secs(15)).0.success());
    let (code, out) = check();
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.starts_with("unhealthy: the daemon is not running"),
        "{out}"
    );
}

/// `--color auto|always|never` and `NO_COLOR`: `report`'s bold headers and the log's colours
/// appear on a terminal unless `NO_COLOR` is set, never into a pipe, and `always` / `never`
/// override both.
#[test]
fn colour_follows_color_and_no_color() {
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();
    let config = scratch.write_config("");
    const BOLD: &str = "\u{1b}[1m";
    let once = |extra: &[&str]| {
        run(command(&scratch)
            .env("RUST_LOG", "info")
            .arg("--config")
            .arg(&config)
            .arg("--db")
            .arg(&db)
            .args(extra)
            .arg("once"))
    };
    // Logs into a pipe: colours only with `always`.
    let plain = once(&[]);
    assert!(plain.status.success(), "{}", text(&plain));
    assert!(!text(&plain).contains('\u{1b}'), "{}", text(&plain));
    let coloured = once(&["--color", "always"]);
    assert!(text(&coloured).contains('\u{1b}'), "{}", text(&coloured));

    let report = |extra: &[&str], envs: &[(&str, &str)]| {
        let mut cmd = command(&scratch);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let out = run(cmd
            .arg("--config")
            .arg(&config)
            .args(extra)
            .args(["report", "daily"]));
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(!report(&[], &[]).contains('\u{1b}'));
    assert!(report(&["--color", "always"], &[("NO_COLOR", "1")]).contains(BOLD));
    assert!(!report(&["--color", "never"], &[]).contains('\u{1b}'));

    // On a pseudo-terminal (util-linux `script`).
    if !cfg!(target_os = "linux") {
        return;
    }
    let on_tty = |flags: &str, no_color: Option<&str>| {
        let shell = format!(
            "{} --config {} {flags} report daily",
            bin().display(),
            config.display()
        );
        let env: Vec<(&str, &str)> = no_color.map(|v| ("NO_COLOR", v)).into_iter().collect();
        let out = run(&mut on_a_terminal(&scratch, &shell, &env));
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    };
    assert!(
        on_tty("", None).contains(BOLD),
        "bold headers on a terminal"
    );
    assert!(
        !on_tty("", Some("1")).contains(BOLD),
        "NO_COLOR on a terminal"
    );
    assert!(
        on_tty("", Some("")).contains(BOLD),
        "an empty NO_COLOR is unset"
    );
    assert!(!on_tty("--color never", None).contains(BOLD));
}

/// `completions SHELL` and `man` come from the command definition alone (a broken config does
/// not stop them): bash loads the script and registers the completion for every subcommand,
/// and the man page is roff naming each subcommand.
#[test]
fn completions_and_the_man_page_cover_every_subcommand() {
    let scratch = Scratch::new();
    let bad = scratch.path("bad.toml");
    std::fs::write(&bad, "this is = not [toml").unwrap();
    let generate = |args: &[&str]| {
        let out = run(command(&scratch).arg("--config").arg(&bad).args(args));
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let subcommands = [
        "run",
        "once",
        "preview",
        "login",
        "check-config",
        "status",
        "queue",
        "install",
        "uninstall",
        "report",
        "export",
        "completions",
        "man",
    ];
    let bash = generate(&["completions", "bash"]);
    let script = scratch.path("completion.bash");
    std::fs::write(&script, &bash).unwrap();
    let loaded = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p opencode-telemetry",
            script.display()
        ))
        .output()
        .unwrap();
    assert!(loaded.status.success(), "{}", text(&loaded));
    assert!(
        String::from_utf8_lossy(&loaded.stdout).contains("opencode-telemetry"),
        "{}",
        text(&loaded)
    );
    for sub in subcommands {
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        assert!(
            generate(&["completions", shell]).contains("check-config"),
            "{shell}"
        );
    }
    let man = generate(&["man"]);
    assert!(man.contains(".TH opencode-telemetry 1"), "{man}");
    for sub in subcommands {
        assert!(
            man.contains(&format!(
                "opencode\\-telemetry\\-{}",
                sub.replace('-', "\\-")
            )),
            "the man page lacks {sub}"
        );
    }
}

/// `shell` run through a pseudo-terminal (util-linux `script`; BSD `script` on macOS takes other
/// arguments), with the clean environment of [`command`] plus `env` and `TERM=xterm`.
fn on_a_terminal(scratch: &Scratch, shell: &str, env: &[(&str, &str)]) -> std::process::Command {
    let base = command(scratch);
    let mut script = std::process::Command::new("script");
    script.env_clear();
    for (k, v) in base.get_envs() {
        if let Some(v) = v {
            script.env(k, v);
        }
    }
    script.envs(env.iter().copied());
    script
        .env("TERM", "xterm")
        .args(["-q", "-e", "-c", shell, "/dev/null"]);
    script
}
