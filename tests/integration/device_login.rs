//! Per-device credentials from the daemon's side (#14), on the real binary against the project's
//! Convex functions behind the shim (`convex/emulator/shim.ts`), set up as a new deployment:
//! no shared `INGEST_TOKEN`, the legacy opt-in off, one device created with `devices:create`.
//!
//! - `login` checks the token with one `GET /whoami`, stores it 0600 in the credentials file
//!   only on success; `check-config` and `status` name the device; `run` then delivers as that
//!   device with no token in its environment;
//! - a wrong token or an unreachable deployment: a clear message, exit 1, nothing written;
//! - a source row with an out-of-range timestamp: one warning, the record stored corrected, the
//!   other sessions delivered.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::convex_e2e::{day, Emulator};
use crate::support::daemon::Daemon;
use crate::support::*;

/// Runs `cmd` with `input` on its standard input, with a time limit.
fn run_with_stdin(cmd: &mut Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        out.read_to_end(&mut v).unwrap();
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        err.read_to_end(&mut v).unwrap();
        v
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("command timed out: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The credentials file of the scratch home (`$XDG_CONFIG_HOME/opencode-telemetry/env`).
fn credentials(scratch: &Scratch) -> PathBuf {
    scratch.path("home/.config/opencode-telemetry/env")
}

/// A config delivering to `url`, with its data dir in the scratch dir.
fn convex_config(scratch: &Scratch, url: &str) -> PathBuf {
    scratch.write_config(&format!("[convex]\nurl = \"{url}\"\n"))
}

/// `login --token-stdin` with `token` piped in.
fn login(scratch: &Scratch, config: &Path, token: &str) -> Output {
    run_with_stdin(
        command(scratch)
            .arg("--config")
            .arg(config)
            .args(["login", "--token-stdin"]),
        &format!("{token}\n"),
    )
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn login_then_run_delivers_as_that_device_and_status_names_it() {
    let emu = Emulator::start_devices_only();
    let created = emu.mutation("devices:create", json!({"name": "e2e-laptop"}));
    let token = created["token"].as_str().unwrap().to_string();
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();
    let config = convex_config(&scratch, &emu.url);

    // Before login: no token anywhere, so the delivering commands stop at the config check.
    let out = run(command(&scratch).arg("--config").arg(&config).arg("once"));
    assert_eq!(out.status.code(), Some(78), "{:?}", text(&out));
    assert!(
        text(&out).1.contains("opencode-telemetry login"),
        "{:?}",
        text(&out)
    );

    let out = login(&scratch, &config, &token);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("this machine is device `e2e-laptop` (id "),
        "{stdout}"
    );
    assert!(!stdout.contains(&token) && !stderr.contains(&token));
    let id: String = stdout
        .split("(id ")
        .nth(1)
        .unwrap()
        .chars()
        .take_while(|c| c.is_ascii_hexdigit())
        .collect();
    assert_eq!(id.len(), 32, "{stdout}");
    let creds = credentials(&scratch);
    assert_eq!(
        std::fs::read_to_string(&creds).unwrap(),
        format!("OPENCODE_TELEMETRY_INGEST_TOKEN={token}\n")
    );
    assert_eq!(mode(&creds), 0o600);
    assert!(stdout.contains(&creds.display().to_string()), "{stdout}");
    // One request to the deployment, and it was /whoami.
    assert_eq!(emu.requests_to("/whoami").len(), 1);
    assert_eq!(emu.requests_to("/ingest").len(), 0);

    // check-config finds the token in the credentials file and asks who this is.
    let out = run(command(&scratch)
        .arg("--config")
        .arg(&config)
        .arg("check-config"));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "# ingest token: from the credentials file {}",
            creds.display()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("# device: this machine is device `e2e-laptop`"),
        "{stdout}"
    );
    assert!(!stdout.contains(&token) && !stderr.contains(&token));
    // --offline asks nothing.
    let before = emu.requests_to("/whoami").len();
    let out = run(command(&scratch)
        .arg("--config")
        .arg(&config)
        .args(["check-config", "--offline"]));
    assert!(out.status.success());
    assert!(!text(&out).0.contains("# device:"));
    assert_eq!(emu.requests_to("/whoami").len(), before);

    // The daemon, with no token in its environment, delivers every session as that device.
    let log = scratch.path("daemon.log");
    let mut cmd = command(&scratch);
    cmd.env("RUST_LOG", "info")
        .arg("--config")
        .arg(&config)
        .arg("--db")
        .arg(&db)
        .arg("run");
    let mut daemon = Daemon::spawn(cmd, &log);
    wait_for(60, "25 sessions stored", || emu.all_sessions().len() == 25);
    let rows = emu.all_sessions();
    assert!(
        rows.iter().all(|r| r["deviceId"] == id.as_str()),
        "{rows:?}"
    );
    let devices = emu.query("devices:list", json!({}));
    assert_eq!(devices[0]["name"], "e2e-laptop");
    assert_eq!(devices[0]["deviceId"], id.as_str());
    assert!(devices[0]["lastSeenAt"].is_number(), "{devices}");
    let times: Vec<f64> = rows
        .iter()
        .map(|r| r["createdAt"].as_f64().unwrap())
        .collect();
    let from = day(times.iter().copied().fold(f64::MAX, f64::min) as i64);
    let to = day(times.iter().copied().fold(0.0, f64::max) as i64);
    let per = emu.query("totals:perDevice", json!({"from": from, "to": to}));
    assert_eq!(per.as_array().unwrap().len(), 1, "{per}");
    assert_eq!(per[0]["deviceName"], "e2e-laptop");

    // status (no request of its own) names the device the daemon was told about.
    let status = || {
        let out = run(command(&scratch).arg("--config").arg(&config).arg("status"));
        assert!(out.status.success(), "{:?}", text(&out));
        text(&out).0
    };
    wait_for(10, "the device in the status file", || {
        status().contains("device:          device `e2e-laptop`")
    });
    let whoami_before = emu.requests_to("/whoami").len();
    let json_out = run(command(&scratch)
        .arg("--config")
        .arg(&config)
        .args(["status", "--json"]));
    let v: Value = serde_json::from_slice(&json_out.stdout).unwrap();
    assert_eq!(v["device"]["name"], "e2e-laptop");
    daemon.terminate(Duration::from_secs(15));
    let after = status();
    assert!(
        after.contains("device `e2e-laptop`") && after.contains("when the daemon last ran"),
        "{after}"
    );
    assert_eq!(emu.requests_to("/whoami").len(), whoami_before);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(!logged.contains(&token), "the token is in the daemon's log");
    assert!(
        !std::fs::read_dir(scratch.path("data"))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.path().is_file())
            .any(|e| std::fs::read(e.path())
                .unwrap()
                .windows(token.len())
                .any(|w| w == token.as_bytes())),
        "the token is in a file of the data dir"
    );
}

#[test]
fn a_wrong_token_or_no_deployment_is_refused_clearly_and_nothing_is_written() {
    let emu = Emulator::start_devices_only();
    let scratch = Scratch::new();
    let config = convex_config(&scratch, &emu.url);
    let creds = credentials(&scratch);

    let out = login(&scratch, &config, "not-a-device-token-0123456789");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("the deployment rejected the token (http 401"),
        "{stderr}"
    );
    assert!(
        stderr.contains("npx convex run devices:create '{\"name\":\""),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was stored"), "{stderr}");
    assert!(!stdout.contains("not-a-device-token") && !stderr.contains("not-a-device-token"));
    assert!(!creds.exists(), "a rejected token was stored");

    // A file that already holds a working setup is left exactly as it was.
    std::fs::create_dir_all(creds.parent().unwrap()).unwrap();
    std::fs::write(&creds, "OPENCODE_TELEMETRY_INGEST_TOKEN=the-old-one\n").unwrap();
    let out = login(&scratch, &config, "another-wrong-token-000");
    assert_eq!(out.status.code(), Some(1));
    // A revoked device's token is refused the same way.
    let created = emu.mutation("devices:create", json!({"name": "gone"}));
    emu.mutation("devices:revoke", json!({"name": "gone"}));
    let out = login(&scratch, &config, created["token"].as_str().unwrap());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("revoked"), "{:?}", text(&out));
    assert_eq!(
        std::fs::read_to_string(&creds).unwrap(),
        "OPENCODE_TELEMETRY_INGEST_TOKEN=the-old-one\n"
    );
    // Something that is not a token is refused before any request.
    let before = emu.requests_to("/whoami").len();
    let out = login(&scratch, &config, "has a space");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("not a device token"),
        "{:?}",
        text(&out)
    );
    assert_eq!(emu.requests_to("/whoami").len(), before);

    // No deployment listening: unreachable, nothing written.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let config = convex_config(&scratch, &url);
    let out = login(&scratch, &config, "a-token-for-nowhere-0001");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("the deployment is unreachable"), "{stderr}");
    assert!(!stderr.contains("a-token-for-nowhere"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&creds).unwrap(),
        "OPENCODE_TELEMETRY_INGEST_TOKEN=the-old-one\n"
    );
    // check-config says the same in one line and still passes (the daemon retries by itself).
    let out = run(command(&scratch)
        .env(
            "OPENCODE_TELEMETRY_INGEST_TOKEN",
            "a-token-for-nowhere-0001",
        )
        .arg("--config")
        .arg(&config)
        .arg("check-config"));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("# device: unknown: the deployment is unreachable"),
        "{stdout}"
    );
    assert!(!stdout.contains("a-token-for-nowhere") && !stderr.contains("a-token-for-nowhere"));
}

#[test]
fn an_out_of_range_timestamp_gives_one_warning_and_blocks_nothing() {
    let emu = Emulator::start_devices_only();
    let created = emu.mutation("devices:create", json!({"name": "clock-test"}));
    let token = created["token"].as_str().unwrap().to_string();
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();
    let conn = writer(&db);
    let bad: String = conn
        .query_row(
            "SELECT id FROM session WHERE parent_id IS NULL ORDER BY id LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    conn.execute("UPDATE session SET time_created = 0 WHERE id = ?1", [&bad])
        .unwrap();
    drop(conn);
    let config = convex_config(&scratch, &emu.url);
    assert!(login(&scratch, &config, &token).status.success());

    let out = run(command(&scratch)
        .env("RUST_LOG", "warn")
        .arg("--config")
        .arg(&config)
        .arg("--db")
        .arg(&db)
        .arg("once"));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("outside the deployment's content rules"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains(&bad), "{}", warnings[0]);
    assert!(warnings[0].contains("createdAt"), "{}", warnings[0]);
    // Every session is stored, the corrected one too, and nothing was rejected.
    assert_eq!(emu.all_sessions().len(), 25);
    let doc = emu.query("sessions:get", json!({"sessionId": bad}));
    assert_eq!(
        doc["corrected"],
        json!(["createdAt", "durationMs"]),
        "{doc}"
    );
    assert_eq!(doc["createdAt"], doc["updatedAt"]);
    assert!(doc.get("durationMs").is_none(), "{doc}");
    let list = run(command(&scratch)
        .arg("--config")
        .arg(&config)
        .args(["queue", "list"]));
    let listed = text(&list).0;
    assert!(
        listed.contains("pending: 0") && listed.contains("dead letters: 0"),
        "{listed}"
    );
}

/// On a terminal `login` asks for the token and the terminal does not echo it: driven through a
/// pseudo-terminal (util-linux `script`), the token typed after the prompt appears nowhere in
/// the terminal's transcript, and is stored.
#[test]
fn on_a_terminal_the_token_is_asked_for_without_echo() {
    if !cfg!(target_os = "linux") {
        return; // BSD `script` takes other arguments.
    }
    let emu = Emulator::start_devices_only();
    let created = emu.mutation("devices:create", json!({"name": "tty-laptop"}));
    let token = created["token"].as_str().unwrap().to_string();
    let scratch = Scratch::new();
    let config = convex_config(&scratch, &emu.url);
    let shell = format!("{} --config {} login", bin().display(), config.display());
    let base = command(&scratch);
    let mut script = Command::new("script");
    script.env_clear();
    for (k, v) in base.get_envs() {
        if let Some(v) = v {
            script.env(k, v);
        }
    }
    let mut child = script
        .env("TERM", "xterm")
        .args(["-q", "-e", "-c", &shell, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let transcript = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut out = child.stdout.take().unwrap();
    let sink = transcript.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let seen = || String::from_utf8_lossy(&transcript.lock().unwrap()).into_owned();
    // Typed only once the prompt is shown, i.e. once echo is off.
    wait_for(30, "the prompt", || {
        seen().contains("device token (input hidden): ")
    });
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("{token}\r").as_bytes()).unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "login did not finish: {}",
            seen()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(stdin);
    reader.join().unwrap();
    let tty = seen();
    assert!(status.success(), "{tty}");
    assert!(tty.contains("this machine is device `tty-laptop`"), "{tty}");
    assert!(!tty.contains(&token), "the token was echoed: {tty}");
    assert_eq!(
        std::fs::read_to_string(credentials(&scratch)).unwrap(),
        format!("OPENCODE_TELEMETRY_INGEST_TOKEN={token}\n")
    );
}
