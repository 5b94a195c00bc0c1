//! `install` / `uninstall` of the real binary into a temporary HOME: the systemd unit checked by
//! `systemd-analyze verify`, the launchd plist parsed by Python's `plistlib`, and the
//! `systemctl`/`launchctl` calls recorded by stand-in scripts first on PATH (no user service
//! manager runs here).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{bin, command, repo_root, run, Scratch};

const UNIT: &str = "opencode-telemetry.service";
const LABEL: &str = "dev.opencode-telemetry";

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

/// The binary as `install` must name it: its canonical path.
fn real_bin() -> PathBuf {
    bin().canonicalize().unwrap()
}

/// A scratch dir with a config file whose name has a space and a `%` (both need escaping in a
/// unit file); returns the config's canonical path.
fn scratch_with_config() -> (Scratch, PathBuf) {
    let scratch = Scratch::new();
    let config = scratch.write_config("");
    let named = scratch.path("my 100% config.toml");
    std::fs::rename(&config, &named).unwrap();
    let named = named.canonicalize().unwrap();
    (scratch, named)
}

/// A stand-in for `program` in `<scratch>/fakebin`: appends its arguments as one line to
/// `<scratch>/<program>.calls`, then runs `body` (sh).
fn fake(scratch: &Scratch, program: &str, body: &str) -> PathBuf {
    let dir = scratch.path("fakebin");
    std::fs::create_dir_all(&dir).unwrap();
    let calls = scratch.path(&format!("{program}.calls"));
    let script = format!("#!/bin/sh\necho \"$*\" >> '{}'\n{body}\n", calls.display());
    let path = dir.join(program);
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn calls(scratch: &Scratch, program: &str) -> Vec<String> {
    std::fs::read_to_string(scratch.path(&format!("{program}.calls")))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The real binary with `--config config` and the fake programs first on PATH.
fn cli(scratch: &Scratch, config: &Path) -> Command {
    let mut cmd = command(scratch);
    let path = format!(
        "{}:{}",
        scratch.path("fakebin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    cmd.env("PATH", path).arg("--config").arg(config);
    cmd
}

/// `[Service]`/`[Unit]`/`[Install]` settings of a unit file: key → values in order.
fn unit_settings(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        let (k, v) = line.split_once('=').expect("key=value");
        map.entry(k.to_string()).or_default().push(v.to_string());
    }
    map
}

fn one<'a>(map: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    match map.get(key).map(Vec::as_slice) {
        Some([v]) => v,
        other => panic!("{key}: expected one value, got {other:?}"),
    }
}

/// Every file under `dir` (none when it does not exist).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
                out.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn dry_run_prints_the_unit_for_this_binary_and_config_and_writes_nothing() {
    let (scratch, config) = scratch_with_config();
    let out = run(cli(&scratch, &config).args(["install", "--dry-run", "--manager", "systemd"]));
    assert_ok(&out);
    let unit = unit_settings(&stdout(&out));
    // systemd.service(5) quoting: a word with a space in double quotes, `%` written `%%`.
    let cmd = format!(
        "{} --config \"{}\"",
        real_bin().display(),
        config.display().to_string().replace('%', "%%")
    );
    assert_eq!(one(&unit, "ExecStart"), format!("{cmd} run"));
    assert_eq!(
        one(&unit, "ExecStartPre"),
        format!("{cmd} check-config --offline")
    );
    for (key, want) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "78"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("StandardOutput", "journal"),
        ("StandardError", "journal"),
        ("WantedBy", "default.target"),
        // No core dump holds the token (#15).
        ("LimitCORE", "0"),
    ] {
        assert_eq!(one(&unit, key), want, "{key}");
    }
    assert_eq!(
        unit["SystemCallFilter"],
        ["@system-service", "~@privileged @resources"]
    );
    assert!(one(&unit, "WatchdogSec").ends_with('s'));
    assert!(one(&unit, "MemoryMax").ends_with('M'));
    // The config's data_dir and OpenCode's data dir ($XDG_DATA_HOME/opencode) are writable.
    assert_eq!(
        unit["ReadWritePaths"],
        [
            format!("-{}", scratch.path("data").display()),
            format!("-{}", scratch.path("home/.local/share/opencode").display()),
        ]
    );
    let plan = stderr(&out);
    let unit_path = scratch.path("home/.config/systemd/user").join(UNIT);
    assert!(
        plan.contains(&format!("would write {}", unit_path.display())),
        "{plan}"
    );
    assert!(
        plan.contains("would run: systemctl --user daemon-reload\n"),
        "{plan}"
    );
    assert!(
        plan.contains(&format!("would run: systemctl --user enable {UNIT}\n")),
        "{plan}"
    );
    assert!(files_under(&scratch.path("home")).is_empty());
    assert!(!scratch.path("data").exists());
}

#[test]
fn install_and_uninstall_run_systemctl_and_are_idempotent() {
    let (scratch, config) = scratch_with_config();
    fake(&scratch, "systemctl", "exit 0");
    let unit_path = scratch.path("home/.config/systemd/user").join(UNIT);
    let dry = run(cli(&scratch, &config).args(["install", "--dry-run", "--manager", "systemd"]));
    assert_ok(&dry);

    let first = run(cli(&scratch, &config).args(["install", "--manager", "systemd"]));
    assert_ok(&first);
    assert_eq!(std::fs::read_to_string(&unit_path).unwrap(), stdout(&dry));
    assert!(stdout(&first).contains(&format!("wrote {}", unit_path.display())));
    assert!(scratch.path("data").is_dir(), "the data dir is created");
    assert!(scratch.path("home/.local/share/opencode").is_dir());
    assert_eq!(
        calls(&scratch, "systemctl"),
        ["--user daemon-reload", &format!("--user enable {UNIT}")]
    );
    assert!(stdout(&first).contains("ran: systemctl --user daemon-reload\n"));

    let again = run(cli(&scratch, &config).args(["install", "--start", "--manager", "systemd"]));
    assert_ok(&again);
    assert!(
        stdout(&again).contains(&format!("unchanged {}", unit_path.display())),
        "{}",
        stdout(&again)
    );
    assert_eq!(
        calls(&scratch, "systemctl")[2..],
        [
            "--user daemon-reload",
            &format!("--user enable --now {UNIT}")
        ]
    );

    // A unit file with other content (an older install) is rewritten, and --start restarts the
    // service so the new unit takes effect.
    std::fs::write(
        &unit_path,
        "[Service]\nExecStart=/old/opencode-telemetry run\n",
    )
    .unwrap();
    let changed = run(cli(&scratch, &config).args(["install", "--start", "--manager", "systemd"]));
    assert_ok(&changed);
    assert!(stdout(&changed).contains(&format!("replaced {}", unit_path.display())));
    assert_eq!(std::fs::read_to_string(&unit_path).unwrap(), stdout(&dry));
    assert_eq!(
        calls(&scratch, "systemctl")[4..],
        [
            "--user daemon-reload",
            &format!("--user enable {UNIT}"),
            &format!("--user restart {UNIT}")
        ]
    );

    // One convention for both dry runs (#20): stdout carries only what `install` would write
    // (the unit), every "would …" line goes to stderr, and nothing is done.
    let plan = run(cli(&scratch, &config).args(["uninstall", "--dry-run", "--manager", "systemd"]));
    assert_ok(&plan);
    assert_eq!(stdout(&plan), "", "uninstall --dry-run printed on stdout");
    let plan_err = String::from_utf8_lossy(&plan.stderr);
    assert!(
        plan_err.contains(&format!("would remove {}", unit_path.display())),
        "{plan_err}"
    );
    assert!(
        plan_err.contains("would run: systemctl --user disable --now"),
        "{plan_err}"
    );
    assert!(unit_path.exists());
    let dry = run(cli(&scratch, &config).args(["install", "--dry-run", "--manager", "systemd"]));
    assert_ok(&dry);
    assert_eq!(stdout(&dry), std::fs::read_to_string(&unit_path).unwrap());
    assert!(String::from_utf8_lossy(&dry.stderr).contains("would leave unchanged"));
    assert_eq!(
        calls(&scratch, "systemctl").len(),
        7,
        "a dry run calls nothing"
    );

    std::fs::write(scratch.path("data/keep.txt"), "x").unwrap();
    let gone = run(cli(&scratch, &config).args(["uninstall", "--manager", "systemd"]));
    assert_ok(&gone);
    assert!(!unit_path.exists());
    assert_eq!(
        calls(&scratch, "systemctl")[7..],
        [
            &format!("--user disable --now {UNIT}"),
            "--user daemon-reload"
        ]
    );
    assert!(stdout(&gone).contains(&format!("removed {}", unit_path.display())));
    assert!(stdout(&gone).contains("left alone"), "{}", stdout(&gone));
    assert!(scratch.path("data/keep.txt").exists());
    assert!(config.exists());

    let twice = run(cli(&scratch, &config).args(["uninstall", "--manager", "systemd"]));
    assert_ok(&twice);
    assert!(
        stdout(&twice).contains("not installed"),
        "{}",
        stdout(&twice)
    );
    assert_eq!(calls(&scratch, "systemctl").len(), 9, "no systemctl call");
}

#[test]
fn without_a_user_manager_install_writes_the_unit_and_fails_clearly() {
    // The real systemctl, with no user manager reachable (the environment names no bus).
    if !Path::new("/usr/bin/systemctl").exists() && !Path::new("/bin/systemctl").exists() {
        assert!(std::env::var_os("CI").is_none(), "systemctl missing in CI");
        eprintln!("skipped: no systemctl on this machine");
        return;
    }
    let (scratch, config) = scratch_with_config();
    let out = run(cli(&scratch, &config).args(["install", "--manager", "systemd"]));
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("`systemctl --user daemon-reload` failed"),
        "{err}"
    );
    assert!(err.contains("Failed to connect to bus"), "{err}");
    assert!(err.contains("loginctl enable-linger"), "{err}");
    assert!(
        err.contains(&format!("systemctl --user enable --now {UNIT}")),
        "{err}"
    );
    assert!(scratch
        .path("home/.config/systemd/user")
        .join(UNIT)
        .is_file());
}

/// `systemd-analyze --user verify` on a unit file: `Err(its output)` on any complaint (it exits 0
/// even on unknown keys and bad values, so its output must be empty too). `None` when
/// systemd-analyze is not installed, which fails the test in CI (`.ci/run` installs it).
fn verify(unit_file: &Path, scratch: &Scratch) -> Option<Result<(), String>> {
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists());
    let Some(analyze) = analyze else {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is missing; .ci/run installs Debian's systemd package"
        );
        eprintln!("skipped: no systemd-analyze on this machine");
        return None;
    };
    let runtime = scratch.path("runtime");
    std::fs::create_dir_all(&runtime).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = run(Command::new(analyze)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", scratch.path("home"))
        .env("XDG_RUNTIME_DIR", &runtime)
        .args(["--user", "verify"])
        .arg(unit_file));
    if out.status.success() && out.stdout.is_empty() && out.stderr.is_empty() {
        Some(Ok(()))
    } else {
        Some(Err(format!(
            "systemd-analyze verify {}: {:?}\n{}{}",
            unit_file.display(),
            out.status,
            stdout(&out),
            stderr(&out)
        )))
    }
}

#[test]
fn the_rendered_unit_passes_systemd_analyze_verify() {
    let (scratch, config) = scratch_with_config();
    let out = run(cli(&scratch, &config).args(["install", "--dry-run", "--manager", "systemd"]));
    assert_ok(&out);
    let dir = scratch.path("render");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(UNIT), stdout(&out)).unwrap();
    if let Some(result) = verify(&dir.join(UNIT), &scratch) {
        result.unwrap();
    }
}

#[test]
fn the_committed_unit_template_passes_systemd_analyze_verify() {
    let scratch = Scratch::new();
    let template = std::fs::read_to_string(repo_root().join("systemd").join(UNIT)).unwrap();
    assert!(template.contains("%h/.cargo/bin/opencode-telemetry run"));
    let dir = scratch.path("template");
    std::fs::create_dir_all(&dir).unwrap();
    let bin = real_bin().display().to_string();
    std::fs::write(
        dir.join(UNIT),
        template.replace("%h/.cargo/bin/opencode-telemetry", &bin),
    )
    .unwrap();
    if let Some(result) = verify(&dir.join(UNIT), &scratch) {
        result.unwrap();
    }
}

#[test]
fn the_verify_check_catches_a_broken_unit() {
    let scratch = Scratch::new();
    let dir = scratch.path("broken");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(UNIT),
        format!(
            "[Service]\nExecStart={} run\nRestartPreventExitStatuss=78\nMemoryMax=lots\n",
            real_bin().display()
        ),
    )
    .unwrap();
    if let Some(result) = verify(&dir.join(UNIT), &scratch) {
        let err = result.unwrap_err();
        assert!(err.contains("RestartPreventExitStatuss"), "{err}");
        assert!(err.contains("lots"), "{err}");
    }
}

/// Parses a plist with Python's `plistlib` into JSON.
fn parse_plist(text: &str) -> serde_json::Value {
    use std::io::Write;
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import json, plistlib, sys; print(json.dumps(plistlib.loads(sys.stdin.buffer.read())))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "plistlib: {}\n{text}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_rendered_plist_parses_with_the_launchagent_keys() {
    let (scratch, config) = scratch_with_config();
    let out = run(cli(&scratch, &config).args(["install", "--dry-run", "--manager", "launchd"]));
    assert_ok(&out);
    let plist = parse_plist(&stdout(&out));
    let home = scratch.path("home");
    assert_eq!(plist["Label"], LABEL);
    assert_eq!(
        plist["ProgramArguments"],
        serde_json::json!([
            real_bin().display().to_string(),
            "--config",
            config.display().to_string(),
            "run"
        ])
    );
    assert_eq!(plist["RunAtLoad"], true);
    assert_eq!(
        plist["KeepAlive"],
        serde_json::json!({"SuccessfulExit": false})
    );
    assert!(plist["ThrottleInterval"].as_u64().is_some_and(|s| s >= 10));
    assert_eq!(plist["ProcessType"], "Background");
    assert_eq!(plist["LowPriorityIO"], true);
    for key in ["SoftResourceLimits", "HardResourceLimits"] {
        assert_eq!(plist[key], serde_json::json!({"Core": 0}), "{key}");
    }
    for (key, file) in [
        ("StandardOutPath", "out.log"),
        ("StandardErrorPath", "err.log"),
    ] {
        assert_eq!(
            plist[key],
            format!("{}/Library/Logs/opencode-telemetry/{file}", home.display())
        );
    }
    assert!(stderr(&out).contains(&format!(
        "would write {}/Library/LaunchAgents/{LABEL}.plist",
        home.display()
    )));
    assert!(files_under(&home).is_empty());
}

#[test]
fn the_committed_plist_template_parses() {
    let text = std::fs::read_to_string(repo_root().join("launchd").join(format!("{LABEL}.plist")))
        .unwrap();
    let plist = parse_plist(&text);
    assert_eq!(plist["Label"], LABEL);
    assert_eq!(
        plist["ProgramArguments"],
        serde_json::json!(["@BIN@", "run"])
    );
    assert_eq!(plist["KeepAlive"]["SuccessfulExit"], false);
}

#[test]
fn launchd_install_bootstraps_and_reinstall_boots_out_first() {
    let (scratch, config) = scratch_with_config();
    // A launchctl that knows one job: `print` succeeds while it is loaded.
    let loaded = scratch.path("launchd-loaded");
    fake(
        &scratch,
        "launchctl",
        &format!(
            "case \"$1\" in\n  print) [ -e '{l}' ] ;;\n  bootstrap) touch '{l}' ;;\n  bootout) rm -f '{l}' ;;\n  *) exit 64 ;;\nesac",
            l = loaded.display()
        ),
    );
    let uid = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string();
    let plist_path = scratch
        .path("home/Library/LaunchAgents")
        .join(format!("{LABEL}.plist"));
    let target = format!("gui/{uid}/{LABEL}");

    let write_only = run(cli(&scratch, &config).args(["install", "--manager", "launchd"]));
    assert_ok(&write_only);
    assert!(plist_path.is_file());
    assert!(
        calls(&scratch, "launchctl").is_empty(),
        "without --start nothing is loaded"
    );

    let start = run(cli(&scratch, &config).args(["install", "--start", "--manager", "launchd"]));
    assert_ok(&start);
    assert!(stdout(&start).contains("unchanged"), "{}", stdout(&start));
    assert!(scratch
        .path("home/Library/Logs/opencode-telemetry")
        .is_dir());
    let bootstrap = format!("bootstrap gui/{uid} {}", plist_path.display());
    assert_eq!(
        calls(&scratch, "launchctl"),
        [format!("print {target}"), bootstrap.clone()]
    );

    let again = run(cli(&scratch, &config).args(["install", "--start", "--manager", "launchd"]));
    assert_ok(&again);
    assert_eq!(
        calls(&scratch, "launchctl")[2..],
        [
            format!("print {target}"),
            format!("bootout {target}"),
            format!("print {target}"),
            bootstrap
        ]
    );

    let gone = run(cli(&scratch, &config).args(["uninstall", "--manager", "launchd"]));
    assert_ok(&gone);
    assert!(!plist_path.exists());
    assert_eq!(
        calls(&scratch, "launchctl")[6..],
        [format!("print {target}"), format!("bootout {target}")]
    );
    assert!(!loaded.exists());
}
