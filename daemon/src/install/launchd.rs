//! The launchd agent (macOS).
//!
//! `~/Library/LaunchAgents/dev.opencode-telemetry.plist`, rendered from
//! `launchd/dev.opencode-telemetry.plist` (`ProgramArguments` = the binary and the same global
//! options; log files in `~/Library/Logs/opencode-telemetry/`). Without `--start` the file is only
//! written (launchd loads it at the next login); with `--start`: `launchctl bootout
//! gui/<uid>/dev.opencode-telemetry` when it is loaded (waiting until it is gone), then `launchctl
//! bootstrap gui/<uid> <plist>`. `uninstall`: `bootout` when loaded, then remove the file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};

use super::{home_dir, status_cmd, Cmd, Options, Plan};

/// The launchd agent template (`@BIN@` and `@HOME@` are its placeholders).
pub const LAUNCHD_PLIST: &str = include_str!("../../../launchd/dev.opencode-telemetry.plist");
/// The launchd job's label (and the plist's file name without `.plist`).
pub const LAUNCHD_LABEL: &str = "dev.opencode-telemetry";

/// The launchd plist: the template with `args` (the binary and its global options) in place of
/// `@BIN@` and `home` in place of `@HOME@`, XML-escaped.
pub fn launchd_plist(args: &[PathBuf], home: &Path) -> String {
    let arg_lines: Vec<String> = args
        .iter()
        .map(|a| format!("    <string>{}</string>", xml_escape(&a.to_string_lossy())))
        .collect();
    LAUNCHD_PLIST
        .replace("    <string>@BIN@</string>", &arg_lines.join("\n"))
        .replace("@HOME@", &xml_escape(&home.to_string_lossy()))
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Where the plist goes.
pub(super) fn plist_path(home: &Path) -> PathBuf {
    home.join("Library/LaunchAgents")
        .join(format!("{LAUNCHD_LABEL}.plist"))
}

/// Where the agent's stdout/stderr go (the plist names them).
pub(super) fn log_dir(home: &Path) -> PathBuf {
    home.join("Library/Logs/opencode-telemetry")
}

/// The user id, from `id -u` (the crate has no `unsafe` for getuid).
fn uid() -> anyhow::Result<String> {
    let uid = Cmd::new("id", &["-u"]).output()?;
    if uid.is_empty() || !uid.chars().all(|c| c.is_ascii_digit()) {
        bail!("`id -u` printed {uid:?}, not a user id");
    }
    Ok(uid)
}

fn launchd_loaded(domain_target: &str) -> bool {
    Cmd::new("launchctl", &["print", domain_target])
        .output()
        .is_ok()
}

/// `gui/<uid>/<label>`: the job's service target.
pub(super) fn service_target() -> anyhow::Result<String> {
    Ok(format!("gui/{}/{LAUNCHD_LABEL}", uid()?))
}

/// `install` after the plist is in place: (re)load it with `--start`, say what happened.
pub(super) fn activate(opts: &Options, plan: &Plan) -> anyhow::Result<()> {
    if opts.start {
        let uid = uid()?;
        let target = format!("gui/{uid}/{LAUNCHD_LABEL}");
        let finish_by_hand = |e: anyhow::Error| {
            anyhow!(
                "{e:#}\n{} is in place. Finish by hand:\n  launchctl bootstrap gui/{uid} {}",
                plan.path.display(),
                plan.path.display()
            )
        };
        if launchd_loaded(&target) {
            Cmd::new("launchctl", &["bootout", &target])
                .run()
                .map_err(finish_by_hand)?;
            // bootout returns before the job is gone; bootstrapping it again too early
            // fails ("Input/output error").
            let deadline = Instant::now() + Duration::from_secs(30);
            while launchd_loaded(&target) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Cmd::new("launchctl", &["bootstrap", &format!("gui/{uid}")])
            .arg(&plan.path)
            .run()
            .map_err(finish_by_hand)?;
        println!("started {LAUNCHD_LABEL} (launchctl print {target})");
    } else {
        println!(
            "not loaded now: launchd loads it at your next login; start it now with \
             `opencode-telemetry install --start`"
        );
    }
    let logs = log_dir(&home_dir()?);
    println!(
        "logs: {}/err.log    state: {}",
        logs.display(),
        status_cmd(opts)
    );
    Ok(())
}

/// `install --dry-run`: what [`activate`] would run.
pub(super) fn dry_run(opts: &Options, plan: &Plan) {
    if opts.start {
        eprintln!("would run: launchctl bootout gui/<uid>/{LAUNCHD_LABEL} (when loaded)");
        eprintln!(
            "would run: launchctl bootstrap gui/<uid> {}",
            plan.path.display()
        );
    }
}

/// `uninstall` before the file is removed: `bootout` when the job is loaded.
pub(super) fn deactivate_cmds() -> anyhow::Result<Vec<Cmd>> {
    let target = service_target()?;
    Ok(if launchd_loaded(&target) {
        vec![Cmd::new("launchctl", &["bootout", &target])]
    } else {
        Vec::new()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn the_plist_names_the_arguments_and_home_escaped() {
        let plist = launchd_plist(
            &[
                p("/Users/u/bin/opencode-telemetry"),
                p("--config"),
                p("/Users/u/a&b.toml"),
            ],
            Path::new("/Users/u"),
        );
        assert!(plist.contains(
            "    <string>/Users/u/bin/opencode-telemetry</string>\n    <string>--config</string>\n    <string>/Users/u/a&amp;b.toml</string>\n    <string>run</string>"
        ));
        assert!(plist.contains("<string>/Users/u/Library/Logs/opencode-telemetry/err.log</string>"));
        assert!(!plist.contains("@BIN@") && !plist.contains("@HOME@"));
    }
}
