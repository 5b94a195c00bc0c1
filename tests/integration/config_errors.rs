//! A bad configuration exits with 78 (EX_CONFIG) and says which key of which file is wrong.

use crate::support::*;

fn check_config(scratch: &Scratch, config: &std::path::Path) -> (i32, String) {
    let out = run(command(scratch)
        .arg("--config")
        .arg(config)
        .arg("check-config"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The stdout of a command that must have succeeded.
fn succeeded(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes each case's TOML to `config` and asserts `check-config` exits 78 with a message that
/// names the case's key and contains `also`.
fn assert_refused(scratch: &Scratch, config: &std::path::Path, cases: &[(&str, &str)], also: &str) {
    for (toml, key) in cases {
        std::fs::write(config, toml).unwrap();
        let (code, err) = check_config(scratch, config);
        assert_eq!(code, 78, "{toml}: {err}");
        assert!(err.contains(key) && err.contains(also), "{toml}: {err}");
    }
}

#[test]
fn an_unknown_key_exits_78_naming_the_key_and_the_file() {
    let scratch = Scratch::new();
    let config = scratch.write_config("[source]\npoll_intervall_ms = 250\n");
    let (code, err) = check_config(&scratch, &config);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("poll_intervall_ms"), "{err}");
    assert!(err.contains(&config.display().to_string()), "{err}");
}

#[test]
fn a_bad_value_exits_78_naming_the_key_and_the_file() {
    let scratch = Scratch::new();
    for (toml, key) in [
        ("[export]\ndebounce_ms = \"soon\"\n", "debounce_ms"),
        ("[convex]\nbatch_size = 0\n", "convex.batch_size"),
        (
            "[convex]\nurl = \"http://convex.example.com\"\ningest_token = \"t\"\n",
            "convex.url",
        ),
        ("[source]\npoll_interval_ms = -5\n", "poll_interval_ms"),
    ] {
        let config = scratch.write_config(toml);
        let (code, err) = check_config(&scratch, &config);
        assert_eq!(code, 78, "{toml}: {err}");
        assert!(err.contains(key), "{toml}: {err}");
        assert!(err.contains(&config.display().to_string()), "{toml}: {err}");
    }
}

#[test]
fn an_unreadable_or_missing_file_exits_78_naming_it() {
    let scratch = Scratch::new();
    let missing = scratch.path("nope.toml");
    let (code, err) = check_config(&scratch, &missing);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");

    let dir = scratch.path("a-directory.toml");
    std::fs::create_dir_all(&dir).unwrap();
    let (code, err) = check_config(&scratch, &dir);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains(&dir.display().to_string()), "{err}");
}

#[test]
fn malformed_toml_exits_78() {
    let scratch = Scratch::new();
    let config = scratch.write_config("[source\n");
    let (code, err) = check_config(&scratch, &config);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains(&config.display().to_string()), "{err}");
}

#[test]
fn check_config_prints_the_effective_config_with_the_token_redacted() {
    let scratch = Scratch::new();
    let config = scratch.write_config(
        "[convex]\nurl = \"https://happy-otter-123.convex.cloud\"\ningest_token = \"tok-123-secret\"\n",
    );
    let out = run(command(&scratch)
        .arg("--config")
        .arg(&config)
        .arg("check-config"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("https://happy-otter-123.convex.cloud"),
        "{stdout}"
    );
    assert!(stdout.contains("[redacted]"), "{stdout}");
    assert!(!stdout.contains("tok-123-secret"));
    // The env override wins over the file, and is redacted too.
    let out = run(command(&scratch)
        .env("OPENCODE_TELEMETRY_INGEST_TOKEN", "tok-from-env")
        .arg("--config")
        .arg(&config)
        .arg("check-config"));
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("tok-from-env"));
}

#[test]
fn the_shipped_example_config_is_accepted_by_the_binary() {
    let scratch = Scratch::new();
    let example = repo_root().join("daemon/config.example.toml");
    let out = run(command(&scratch)
        .arg("--config")
        .arg(&example)
        .arg("check-config"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_command_has_help() {
    let scratch = Scratch::new();
    for args in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["once", "--help"],
        vec!["check-config", "--help"],
        vec!["status", "--help"],
        vec!["queue", "--help"],
        vec!["queue", "list", "--help"],
        vec!["queue", "retry-dead", "--help"],
        vec!["install", "--help"],
        vec!["uninstall", "--help"],
    ] {
        let out = run(command(&scratch).args(&args));
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Usage: opencode-telemetry"),
            "{args:?}: {text}"
        );
    }
}

/// The database `check-config` reports, for an environment and optional extra arguments.
fn resolved_db(scratch: &Scratch, env: &[(&str, &str)], args: &[&str]) -> String {
    let config = scratch.write_config("");
    let mut cmd = command(scratch);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run(cmd
        .arg("--config")
        .arg(&config)
        .args(args)
        .arg("check-config"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("# opencode database: "))
        .unwrap_or_else(|| panic!("{stdout}"))
        .to_string();
    line.rsplit_once(" (")
        .map(|(p, _)| p.to_string())
        .unwrap_or(line)
}

#[test]
fn the_default_database_is_found_the_way_opencode_resolves_it() {
    let scratch = Scratch::new();
    let data = scratch.path("xdg-data");
    let oc = data.join("opencode");
    std::fs::create_dir_all(&oc).unwrap();
    let data_s = data.display().to_string();
    let env = [("XDG_DATA_HOME", data_s.as_str())];

    // Nothing there yet: $XDG_DATA_HOME/opencode/opencode.db, waited for.
    assert_eq!(
        resolved_db(&scratch, &env, &[]),
        oc.join("opencode.db").display().to_string()
    );
    // Only a channel database (a preview or source build): that one.
    std::fs::write(oc.join("opencode-beta2.db"), b"").unwrap();
    assert_eq!(
        resolved_db(&scratch, &env, &[]),
        oc.join("opencode-beta2.db").display().to_string()
    );
    // The release database exists too: the release one.
    std::fs::write(oc.join("opencode.db"), b"").unwrap();
    assert_eq!(
        resolved_db(&scratch, &env, &[]),
        oc.join("opencode.db").display().to_string()
    );
    // OPENCODE_DB: relative to OpenCode's data dir, or absolute.
    let rel = [
        ("XDG_DATA_HOME", data_s.as_str()),
        ("OPENCODE_DB", "custom.db"),
    ];
    assert_eq!(
        resolved_db(&scratch, &rel, &[]),
        oc.join("custom.db").display().to_string()
    );
    let abs = [
        ("XDG_DATA_HOME", data_s.as_str()),
        ("OPENCODE_DB", "/srv/oc/x.db"),
    ];
    assert_eq!(resolved_db(&scratch, &abs, &[]), "/srv/oc/x.db");
    // --db wins over everything.
    assert_eq!(
        resolved_db(&scratch, &abs, &["--db", "/tmp/y.db"]),
        "/tmp/y.db"
    );
}

/// `<data_dir>/queue` is a file (#16): `run` moves it aside like a corrupt outbox and starts,
/// and every session is delivered, instead of failing every restart on it.
#[test]
fn a_queue_path_that_is_a_file_is_moved_aside_and_run_starts() {
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();
    let config = scratch.write_config("[export]\nfinal_after_secs = 0\n");
    std::fs::create_dir_all(scratch.path("data")).unwrap();
    std::fs::write(scratch.path("data/queue"), b"not an outbox\n").unwrap();
    let mut d = crate::support::daemon::Daemon::start_local(&scratch, &config, &db);
    let roots = root_sessions(&sql(&db));
    wait_for(60, "every session delivered", || {
        let got: std::collections::BTreeSet<String> = ndjson_if_any(&scratch.local_sink())
            .iter()
            .filter_map(|r| r["sessionId"].as_str().map(str::to_string))
            .collect();
        got == roots
    });
    let (exit, _) = d.terminate(std::time::Duration::from_secs(10));
    assert!(exit.success());
    assert!(scratch.path("data/queue").is_dir());
    let moved: Vec<_> = std::fs::read_dir(scratch.path("data"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("queue.corrupt-")
        })
        .collect();
    assert_eq!(moved.len(), 1, "one quarantined copy");
    assert_eq!(
        std::fs::read(moved[0].path()).unwrap(),
        b"not an outbox\n",
        "the file is kept as it was"
    );
    let out = d.output();
    assert!(out.contains("ERROR"), "{out}");
    assert!(out.contains("is a file"), "{out}");
}

/// A `data_dir` that cannot be a directory (here: a file) is a configuration error: `once`
/// and `run` exit 78 naming the key and the file, so systemd does not restart into it.
#[test]
fn a_data_dir_that_is_a_file_exits_78_naming_the_key() {
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();
    let config = scratch.write_config("");
    std::fs::write(scratch.path("data"), b"").unwrap();
    for cmd in ["once", "run"] {
        let out = run(command(&scratch)
            .arg("--config")
            .arg(&config)
            .arg("--db")
            .arg(&db)
            .arg(cmd));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{cmd}: {err}");
        assert!(err.contains("`data_dir`"), "{cmd}: {err}");
        assert!(err.contains(&config.display().to_string()), "{cmd}: {err}");
    }
}

/// `~/` in a path key is the home directory (as the example config writes it); a relative path
/// is refused with 78, since the service's working directory is not the shell's (#20). `--db`
/// on the command line is relative to where it is run.
#[test]
fn tilde_paths_expand_and_relative_ones_exit_78() {
    let scratch = Scratch::new();
    let home = scratch.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let config = scratch.path("tilde.toml");
    std::fs::write(
        &config,
        "data_dir = \"~/telemetry-state\"\n[source]\ndb_path = \"~/oc/opencode.db\"\n",
    )
    .unwrap();
    let out = run(command(&scratch)
        .arg("--config")
        .arg(&config)
        .arg("check-config"));
    let stdout = succeeded(&out);
    assert!(
        stdout.contains(&home.join("telemetry-state").display().to_string()),
        "{stdout}"
    );
    assert!(
        stdout.contains(&home.join("oc/opencode.db").display().to_string()),
        "{stdout}"
    );
    assert!(!scratch.path("~").exists());

    assert_refused(
        &scratch,
        &config,
        &[
            ("data_dir = \"state\"\n", "data_dir"),
            ("[source]\ndb_path = \"oc/opencode.db\"\n", "source.db_path"),
            ("[local]\npath = \"out.ndjson\"\n", "local.path"),
        ],
        "absolute",
    );

    // `--db` relative to the working directory.
    let db = scratch.copy_fixture_db();
    let config = scratch.write_config("");
    let out = run(command(&scratch)
        .current_dir(db.parent().unwrap())
        .arg("--config")
        .arg(&config)
        .arg("--db")
        .arg("opencode.db")
        .arg("check-config"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&db.display().to_string()),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Durations past what the daemon can use (SQLite's busy timeout takes `i32` milliseconds) are
/// configuration errors naming the key, not a panic at open (#20).
#[test]
fn durations_out_of_range_exit_78_naming_the_key() {
    let scratch = Scratch::new();
    let config = scratch.path("ranges.toml");
    assert_refused(
        &scratch,
        &config,
        &[
            (
                "[source]\nbusy_timeout_ms = 2147483648\n",
                "source.busy_timeout_ms",
            ),
            (
                "[source]\npoll_interval_ms = 99999999999\n",
                "source.poll_interval_ms",
            ),
            ("[export]\ndebounce_ms = 4294967296\n", "export.debounce_ms"),
            (
                "[export]\nstale_after_secs = 99999999999\n",
                "export.stale_after_secs",
            ),
            (
                "[convex]\nmax_backoff_secs = 99999999999\n",
                "convex.max_backoff_secs",
            ),
            (
                "[service]\nshutdown_grace_secs = 99999999999\n",
                "service.shutdown_grace_secs",
            ),
        ],
        "at most",
    );
    // The largest accepted value opens the database.
    let db = scratch.copy_fixture_db();
    let config = scratch.write_config("[source]\nbusy_timeout_ms = 2147483647\n");
    run_once(&scratch, &config, &db);
}

/// `status` on a machine where the daemon never ran creates nothing (#20).
#[test]
fn status_on_a_fresh_home_creates_no_state() {
    let scratch = Scratch::new();
    let config = scratch.write_config("");
    let out = run(command(&scratch).arg("--config").arg(&config).arg("status"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("not running"), "{stdout}");
    assert!(stdout.contains("pending:         0 "), "{stdout}");
    assert!(
        !scratch.path("data").exists(),
        "status created {}",
        scratch.path("data").display()
    );
}

/// URL mistakes fail `check-config` with the fix instead of failing later with the wrong advice,
/// and `check-config` prints the exact endpoint it will POST to (#20).
#[test]
fn url_mistakes_exit_78_with_the_fix_and_the_endpoint_is_printed() {
    let scratch = Scratch::new();
    for (url, fix) in [
        (
            "https://happy-otter-123.convex.site/ingest",
            "use https://happy-otter-123.convex.site",
        ),
        (
            "https://dashboard.convex.dev/d/happy-otter-123",
            "convex.cloud",
        ),
        ("http://127.0.0.1:3210", "use http://127.0.0.1:3211"),
    ] {
        let config = scratch.path("url.toml");
        let toml = format!("[convex]\nurl = \"{url}\"\n");
        assert_refused(&scratch, &config, &[(&toml, "convex.url")], fix);
    }
    let config = scratch.write_config("[convex]\nurl = \"https://happy-otter-123.convex.cloud\"\n");
    let out = run(command(&scratch)
        .env("OPENCODE_TELEMETRY_INGEST_TOKEN", "t0k3n-for-the-test")
        .arg("--config")
        .arg(&config)
        .arg("check-config"));
    let stdout = succeeded(&out);
    assert!(
        stdout.contains("# posts to: POST https://happy-otter-123.convex.site/ingest\n"),
        "{stdout}"
    );
}

/// `check-config --probe` makes the one `/whoami` request and exits 1 unless the deployment
/// answers as expected: ok for a live token, 1 for a rejected one or an unreachable deployment;
/// without a deployment there is nothing to ask; `--probe` and `--offline` exclude each other.
#[test]
fn check_config_probe_says_whether_the_deployment_answers() {
    use crate::support::fault_server::{FaultServer, Mode, TOKEN};
    let text = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let scratch = Scratch::new();
    let deployment = FaultServer::in_background(Mode::Normal);
    let config = scratch.write_config(&format!(
        "[convex]\nurl = \"{}\"\n",
        deployment.handle.url()
    ));
    let probe = |token: &str, extra: &[&str]| {
        run(command(&scratch)
            .env("OPENCODE_TELEMETRY_INGEST_TOKEN", token)
            .arg("--config")
            .arg(&config)
            .arg("check-config")
            .args(extra))
    };
    let ok = probe(TOKEN, &["--probe"]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    assert!(text(&ok).contains("# probe: ok"), "{}", text(&ok));

    let wrong = probe("not-the-token", &["--probe"]);
    assert_eq!(wrong.status.code(), Some(1), "{}", text(&wrong));
    assert!(
        text(&wrong).contains("rejected the token"),
        "{}",
        text(&wrong)
    );
    assert!(!text(&wrong).contains("not-the-token"), "{}", text(&wrong));
    // Without --probe the same answer is shown, and the config is still valid.
    assert_eq!(probe("not-the-token", &[]).status.code(), Some(0));

    deployment.set_mode(Mode::Refuse);
    let down = probe(TOKEN, &["--probe"]);
    assert_eq!(down.status.code(), Some(1), "{}", text(&down));
    assert!(text(&down).contains("unreachable"), "{}", text(&down));

    assert_eq!(
        probe(TOKEN, &["--probe", "--offline"]).status.code(),
        Some(2)
    );
    let local = scratch.write_config("");
    let nothing = run(command(&scratch)
        .arg("--config")
        .arg(&local)
        .args(["check-config", "--probe"]));
    assert_eq!(nothing.status.code(), Some(0), "{}", text(&nothing));
    assert!(
        text(&nothing).contains("nothing to ask"),
        "{}",
        text(&nothing)
    );
}

/// `queue list --json`: one object with `pendingCount`, each sink's pending records
/// (`sessionId`, `enqueuedAt`, `bytes`, `attempts`) and the dead letters; here every session
/// waits for a deployment that refuses connections, none for the local store, which has them.
#[test]
fn queue_list_json_names_each_sinks_pending_records() {
    use crate::support::fault_server::{FaultServer, Mode, TOKEN};
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();
    let deployment = FaultServer::in_background(Mode::Refuse);
    let config = scratch.write_config(&format!(
        "[convex]\nurl = \"{}\"\n",
        deployment.handle.url()
    ));
    let once = run(command(&scratch)
        .env("OPENCODE_TELEMETRY_INGEST_TOKEN", TOKEN)
        .arg("--config")
        .arg(&config)
        .arg("--db")
        .arg(&db)
        .args(["once", "--timeout-secs", "1"]));
    assert_eq!(once.status.code(), Some(1));
    let out = run(command(&scratch)
        .env("OPENCODE_TELEMETRY_INGEST_TOKEN", TOKEN)
        .arg("--config")
        .arg(&config)
        .args(["queue", "list", "--json"]));
    let list: serde_json::Value = serde_json::from_str(&succeeded(&out)).unwrap();
    assert_eq!(list["pendingCount"], 25, "{list}");
    let sinks = list["sinks"].as_array().unwrap();
    let pending = |sink: &str| {
        sinks
            .iter()
            .find(|s| s["sink"] == sink)
            .unwrap_or_else(|| panic!("no {sink} in {list}"))["pending"]
            .as_array()
            .unwrap()
            .clone()
    };
    assert!(pending("store").is_empty(), "{list}");
    let convex = pending("convex");
    assert_eq!(convex.len(), 25, "{list}");
    for p in &convex {
        assert!(p["sessionId"].as_str().unwrap().starts_with("ses_"), "{p}");
        assert!(p["bytes"].as_u64().unwrap() > 100, "{p}");
        assert!(p["enqueuedAt"].as_i64().unwrap() > 1_700_000_000_000, "{p}");
        assert!(p["attempts"].as_u64().is_some(), "{p}");
    }
    assert_eq!(list["dead"], serde_json::json!([]));
}
