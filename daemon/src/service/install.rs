//! `install`: writes the user service definition with this binary's real path and starts it.
//!
//! - Linux: `~/.config/systemd/user/opencode-telemetry.service` from `systemd/opencode-telemetry.service`
//!   (the `%h/.cargo/bin/opencode-telemetry` paths replaced by the running binary, and
//!   `--config` added when a config file was named), then `systemctl --user daemon-reload` and
//!   `systemctl --user enable --now opencode-telemetry`.
//! - macOS: `~/Library/LaunchAgents/dev.opencode-telemetry.plist` from
//!   `launchd/dev.opencode-telemetry.plist`, then `launchctl bootstrap gui/<uid> <plist>`.
//!
//! `--print` only prints the file; `--no-start` writes it without enabling or starting it.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context};

use crate::config::Loaded;

/// The systemd user unit template.
pub const SYSTEMD_UNIT: &str = include_str!("../../../systemd/opencode-telemetry.service");
/// The launchd agent template.
pub const LAUNCHD_PLIST: &str = include_str!("../../../launchd/dev.opencode-telemetry.plist");

/// The unit with `bin` as the binary and, when given, `--config <path>` on every command.
pub fn systemd_unit(bin: &str, config: Option<&str>) -> String {
    let cmd = match config {
        Some(c) => format!("{bin} --config {}", quote(c)),
        None => bin.to_string(),
    };
    SYSTEMD_UNIT.replace("%h/.cargo/bin/opencode-telemetry", &cmd)
}

/// The plist with the binary path, home and, when given, `--config <path>`.
pub fn launchd_plist(bin: &str, home: &str, config: Option<&str>) -> String {
    let mut plist = LAUNCHD_PLIST.replace("@BIN@", bin).replace("@HOME@", home);
    if let Some(c) = config {
        plist = plist.replace(
            "    <string>run</string>",
            &format!(
                "    <string>--config</string>\n    <string>{c}</string>\n    <string>run</string>"
            ),
        );
    }
    plist
}

fn quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c))
    {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// See the module docs.
///
/// # Errors
/// IO errors and failing `systemctl`/`launchctl` calls.
pub fn install(loaded: &Loaded, print_only: bool, no_start: bool) -> anyhow::Result<ExitCode> {
    let bin = std::env::current_exe().context("finding this binary")?;
    let bin = bin.to_string_lossy().into_owned();
    let config = loaded
        .path
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned());
    let home = directories::BaseDirs::new()
        .map(|b| b.home_dir().to_path_buf())
        .context("no home directory")?;
    let (path, text): (PathBuf, String) = if cfg!(target_os = "macos") {
        (
            home.join("Library/LaunchAgents/dev.opencode-telemetry.plist"),
            launchd_plist(&bin, &home.to_string_lossy(), config.as_deref()),
        )
    } else {
        (
            home.join(".config/systemd/user/opencode-telemetry.service"),
            systemd_unit(&bin, config.as_deref()),
        )
    };
    if print_only {
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    super::ensure_parent(&path)?;
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    if no_start {
        return Ok(ExitCode::SUCCESS);
    }
    if cfg!(target_os = "macos") {
        std::fs::create_dir_all(home.join("Library/Logs/opencode-telemetry"))?;
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .context("running id -u")?;
        let uid = String::from_utf8_lossy(&uid.stdout).trim().to_string();
        run(Command::new("launchctl")
            .args(["bootstrap", &format!("gui/{uid}")])
            .arg(&path))?;
        println!(
            "started dev.opencode-telemetry (launchctl print gui/{uid}/dev.opencode-telemetry)"
        );
    } else {
        run(Command::new("systemctl").args(["--user", "daemon-reload"]))?;
        run(Command::new("systemctl").args(["--user", "enable", "--now", "opencode-telemetry"]))?;
        println!("started opencode-telemetry (journalctl --user -u opencode-telemetry -f)");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_runs_this_binary_with_the_named_config() {
        let unit = systemd_unit("/opt/bin/opencode-telemetry", Some("/home/u/my cfg.toml"));
        assert!(unit.contains(
            "ExecStart=/opt/bin/opencode-telemetry --config \"/home/u/my cfg.toml\" run"
        ));
        assert!(unit.contains("ExecStartPre=/opt/bin/opencode-telemetry --config \"/home/u/my cfg.toml\" check-config"));
        assert!(unit.contains("RestartPreventExitStatus=78"));
        assert!(!unit.contains("%h/.cargo"));
    }

    #[test]
    fn the_plist_names_the_binary_and_home() {
        let plist = launchd_plist("/usr/local/bin/opencode-telemetry", "/Users/u", None);
        assert!(plist.contains("<string>/usr/local/bin/opencode-telemetry</string>"));
        assert!(plist.contains("/Users/u/Library/Logs/opencode-telemetry/err.log"));
        assert!(!plist.contains('@'));
    }
}
