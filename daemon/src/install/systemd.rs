//! The systemd user unit (Linux and every other non-macOS system).
//!
//! `$XDG_CONFIG_HOME/systemd/user/opencode-telemetry.service` (default
//! `~/.config/systemd/user/…`), rendered from `systemd/opencode-telemetry.service`:
//! - `ExecStartPre=`/`ExecStart=` run the canonical path of the running binary
//!   ([`std::env::current_exe`]), with `--config <absolute path>` when a config file was named
//!   (`--config` or `OPENCODE_TELEMETRY_CONFIG`) and `--db <absolute path>` when `--db` was given;
//! - `ReadWritePaths=` lists the effective `data_dir` (the outbox and the local store), the
//!   directory of the deprecated `[local] path` file (when set and outside `data_dir`) and the
//!   directory of
//!   `source.db_path` (see the unit's comment for why OpenCode's directory must be writable);
//!   `install` creates the ones that do not exist yet. Change `data_dir`, `[local] path` or
//!   `source.db_path` later and you re-run `install`.
//!
//! Then it runs `systemctl --user daemon-reload` and `systemctl --user enable <unit>` (the
//! service starts at the next login of the user manager); with `--start`,
//! `systemctl --user enable --now <unit>`, or `enable` + `restart` when the unit file changed so
//! the running service picks up the new one.
//!
//! `uninstall`: `systemctl --user disable --now <unit>`, remove the file, `daemon-reload`.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};

use super::{absolute, home_dir, status_cmd, Cmd, Options, Plan, Wrote};
use crate::config::Loaded;

/// The systemd user unit template.
pub const SYSTEMD_UNIT: &str = include_str!("../../../systemd/opencode-telemetry.service");
/// The systemd unit's name.
pub const UNIT_NAME: &str = "opencode-telemetry.service";
/// The binary path the systemd template uses; replaced by the real command.
pub const TEMPLATE_BIN: &str = "%h/.cargo/bin/opencode-telemetry";

/// The systemd unit: the template with `command` (the binary and its global options) in place of
/// the template's binary path, and one `ReadWritePaths=-<dir>` line per entry of `writable` in
/// place of the template's `ReadWritePaths=` lines.
///
/// # Errors
/// A path that cannot be written into a unit file (it contains `"`, `\` or a control character).
pub fn systemd_unit(command: &[PathBuf], writable: &[PathBuf]) -> anyhow::Result<String> {
    let words = command
        .iter()
        .map(|p| exec_word(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cmd = words.join(" ");
    let mut out = String::with_capacity(SYSTEMD_UNIT.len() + 256);
    let mut paths_written = false;
    for line in SYSTEMD_UNIT.lines() {
        if line.starts_with("ReadWritePaths=") {
            if !paths_written {
                for dir in writable {
                    out.push_str(&format!("ReadWritePaths={}\n", path_word(dir, "-")?));
                }
                paths_written = true;
            }
            continue;
        }
        out.push_str(&line.replace(TEMPLATE_BIN, &cmd));
        out.push('\n');
    }
    Ok(out)
}

/// Rejects what cannot be written into a unit file reliably.
fn unit_safe(p: &Path) -> anyhow::Result<String> {
    let s = p.to_str().ok_or_else(|| {
        anyhow!(
            "{} is not valid UTF-8; a unit file cannot name it",
            p.display()
        )
    })?;
    if s.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
        bail!("{s:?} contains a quote, backslash or control character; a unit file cannot name it");
    }
    Ok(s.to_string())
}

fn needs_quotes(s: &str) -> bool {
    !s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:,@=".contains(c))
}

/// A word of an `ExecStart=` command line: `%` and `$` doubled (no specifier or variable
/// expansion), quoted when it has anything but plain path characters.
fn exec_word(p: &Path) -> anyhow::Result<String> {
    let s = unit_safe(p)?.replace('%', "%%").replace('$', "$$");
    Ok(if needs_quotes(&s) {
        format!("\"{s}\"")
    } else {
        s
    })
}

/// A path of a path-list setting (`ReadWritePaths=`), with `prefix` (`-`: ignore when missing).
fn path_word(p: &Path, prefix: &str) -> anyhow::Result<String> {
    let s = format!("{prefix}{}", unit_safe(p)?.replace('%', "%%"));
    Ok(if needs_quotes(&s) {
        format!("\"{s}\"")
    } else {
        s
    })
}

/// `dirs` without duplicates and without those inside another one of them.
fn outermost(mut dirs: Vec<PathBuf>) -> Vec<PathBuf> {
    dirs.sort();
    dirs.dedup();
    let all = dirs.clone();
    dirs.retain(|d| !all.iter().any(|o| o != d && d.starts_with(o)));
    dirs
}

/// `$XDG_CONFIG_HOME` when absolute, else `~/.config` (what the systemd user manager reads).
fn xdg_config_home(home: &Path) -> PathBuf {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| home.join(".config"))
}

/// Where the unit goes.
pub(super) fn unit_path(home: &Path) -> PathBuf {
    xdg_config_home(home).join("systemd/user").join(UNIT_NAME)
}

/// The unit for `command` (the binary and its global options) and the directories the service
/// writes (returned too: `install` creates them).
pub(super) fn render(
    loaded: &Loaded,
    command: &[PathBuf],
) -> anyhow::Result<(String, Vec<PathBuf>)> {
    let c = &loaded.config;
    let mut writable = vec![absolute(&c.data_dir)?];
    // The local store lives in `data_dir`; the deprecated NDJSON file wherever `local.path` says.
    if c.uses_ndjson() {
        if let Some(dir) = absolute(&c.local.path)?.parent() {
            writable.push(dir.to_path_buf());
        }
    }
    if let Some(dir) = absolute(&c.source.db_path)?.parent() {
        writable.push(dir.to_path_buf());
    }
    let writable = outermost(writable);
    let mut unit = systemd_unit(command, &writable)?;
    // The credentials file `login` writes and config loading reads: its real place.
    if let Some(creds) = crate::config::credentials_path() {
        if creds != home_dir()?.join(".config/opencode-telemetry/env") {
            unit = unit.replace(
                &format!("\n{TEMPLATE_ENV_FILE}\n"),
                &format!("\nEnvironmentFile={}\n", path_word(&creds, "-")?),
            );
        }
    }
    Ok((unit, writable))
}

/// The template's `EnvironmentFile=` line (the default place of the credentials file).
const TEMPLATE_ENV_FILE: &str = "EnvironmentFile=-%h/.config/opencode-telemetry/env";

fn systemctl(args: &[&str]) -> Cmd {
    let mut all = vec!["--user"];
    all.extend_from_slice(args);
    Cmd::new("systemctl", &all)
}

/// The commands `install` runs after writing the file.
pub(super) fn install_cmds(start: bool, wrote: Wrote) -> Vec<Cmd> {
    let mut cmds = vec![systemctl(&["daemon-reload"])];
    match (start, wrote) {
        (false, _) => cmds.push(systemctl(&["enable", UNIT_NAME])),
        (true, Wrote::Replaced) => {
            cmds.push(systemctl(&["enable", UNIT_NAME]));
            cmds.push(systemctl(&["restart", UNIT_NAME]));
        }
        (true, _) => cmds.push(systemctl(&["enable", "--now", UNIT_NAME])),
    }
    cmds
}

fn no_manager_hint(e: &anyhow::Error) -> &'static str {
    let text = format!("{e:#}");
    if text.contains("Failed to connect to bus") || text.contains("No medium found") {
        "\nNo systemd user manager is running for this user (an ssh or su session without \
         lingering, a container, WSL without systemd). Log in graphically or run \
         `loginctl enable-linger $USER`, then:"
    } else {
        "\nOnce that is fixed, finish by hand:"
    }
}

/// `install` after the unit file is in place: enable (and start) it, say what happened.
pub(super) fn activate(
    loaded: &Loaded,
    opts: &Options,
    plan: &Plan,
    wrote: Wrote,
) -> anyhow::Result<()> {
    let c = &loaded.config;
    let env_file = xdg_config_home(&home_dir()?).join("opencode-telemetry/env");
    if c.uses_convex() && c.convex.ingest_token.is_empty() && !env_file.exists() {
        println!(
            "note: convex.url is set but no device token is configured; run \
             `opencode-telemetry login` (it stores the token in {} with mode 0600), or the \
             service stops at check-config (exit 78)",
            env_file.display()
        );
    }
    for cmd in install_cmds(opts.start, wrote) {
        cmd.run().map_err(|e| {
            let hint = no_manager_hint(&e);
            anyhow!(
                "{e:#}\n{} is in place.{hint}\n  systemctl --user daemon-reload && \
                 systemctl --user enable --now {UNIT_NAME}",
                plan.path.display()
            )
        })?;
    }
    if opts.start {
        println!("started {UNIT_NAME}");
    } else {
        println!(
            "enabled {UNIT_NAME}: it starts with your user manager (at login); start it \
             now with `systemctl --user start {UNIT_NAME}` or `opencode-telemetry install --start`"
        );
        if wrote == Wrote::Replaced {
            println!(
                "a running service keeps the old unit until `systemctl --user restart {UNIT_NAME}`"
            );
        }
    }
    println!(
        "logs: journalctl --user -u {UNIT_NAME} -f    state: {}",
        status_cmd(opts)
    );
    Ok(())
}

/// `uninstall` before the file is removed: stop and disable the unit.
pub(super) fn deactivate_cmds() -> Vec<Cmd> {
    vec![systemctl(&["disable", "--now", UNIT_NAME])]
}

/// `uninstall` after the file is removed.
pub(super) fn forget_cmds() -> Vec<Cmd> {
    vec![systemctl(&["daemon-reload"])]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn the_unit_runs_the_given_command_with_the_given_writable_paths() {
        let unit = systemd_unit(
            &[
                p("/opt/bin/opencode-telemetry"),
                p("--config"),
                p("/home/u/my 100% $cfg.toml"),
            ],
            &[
                p("/home/u/.local/state/opencode-telemetry"),
                p("/home/u/oc dir"),
            ],
        )
        .unwrap();
        assert!(unit.contains(
            "\nExecStart=/opt/bin/opencode-telemetry --config \"/home/u/my 100%% $$cfg.toml\" run\n"
        ));
        assert!(unit.contains(
            "\nExecStartPre=/opt/bin/opencode-telemetry --config \"/home/u/my 100%% $$cfg.toml\" check-config --offline\n"
        ));
        let rw: Vec<&str> = unit
            .lines()
            .filter(|l| l.starts_with("ReadWritePaths="))
            .collect();
        assert_eq!(
            rw,
            [
                "ReadWritePaths=-/home/u/.local/state/opencode-telemetry",
                "ReadWritePaths=\"-/home/u/oc dir\""
            ]
        );
        assert!(!unit.contains("%h/.cargo"));
        assert!(unit.contains("\nType=notify\n"));
    }

    #[test]
    fn paths_a_unit_cannot_hold_are_refused() {
        for bad in ["/a\"b", "/a\\b", "/a\nb"] {
            let err = systemd_unit(&[p(bad)], &[]).unwrap_err();
            assert!(
                err.to_string().contains("a unit file cannot name it"),
                "{err}"
            );
        }
    }

    #[test]
    fn nested_writable_paths_collapse_to_the_outermost() {
        assert_eq!(
            outermost(vec![
                p("/h/state/ot"),
                p("/h/share/oc"),
                p("/h/state/ot/sink"),
                p("/h/share/oc")
            ]),
            [p("/h/share/oc"), p("/h/state/ot")]
        );
        // A sibling sharing a name prefix is not inside.
        assert_eq!(
            outermost(vec![p("/h/a"), p("/h/ab")]),
            [p("/h/a"), p("/h/ab")]
        );
    }

    #[test]
    fn install_commands_follow_start_and_what_changed() {
        let shown = |start, wrote| {
            install_cmds(start, wrote)
                .iter()
                .map(Cmd::shown)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            shown(false, Wrote::Created),
            [
                "systemctl --user daemon-reload",
                "systemctl --user enable opencode-telemetry.service"
            ]
        );
        assert_eq!(
            shown(true, Wrote::Unchanged),
            [
                "systemctl --user daemon-reload",
                "systemctl --user enable --now opencode-telemetry.service"
            ]
        );
        assert_eq!(
            shown(true, Wrote::Replaced),
            [
                "systemctl --user daemon-reload",
                "systemctl --user enable opencode-telemetry.service",
                "systemctl --user restart opencode-telemetry.service"
            ]
        );
    }
}
