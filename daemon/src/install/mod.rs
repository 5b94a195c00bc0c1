//! `install` and `uninstall`: the user service definition, written with this binary's real path.
//!
//! # systemd (Linux and every other non-macOS system)
//! `$XDG_CONFIG_HOME/systemd/user/opencode-telemetry.service` (default
//! `~/.config/systemd/user/…`), rendered from `systemd/opencode-telemetry.service`:
//! - `ExecStartPre=`/`ExecStart=` run the canonical path of the running binary
//!   ([`std::env::current_exe`]), with `--config <absolute path>` when a config file was named
//!   (`--config` or `OPENCODE_TELEMETRY_CONFIG`) and `--db <absolute path>` when `--db` was given;
//! - `ReadWritePaths=` lists the effective `data_dir`, the local sink file's directory (when it
//!   lies outside `data_dir` and no Convex deployment is configured) and the directory of
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
//!
//! # launchd (macOS)
//! `~/Library/LaunchAgents/dev.opencode-telemetry.plist`, rendered from
//! `launchd/dev.opencode-telemetry.plist` (`ProgramArguments` = the binary and the same global
//! options; log files in `~/Library/Logs/opencode-telemetry/`). Without `--start` the file is only
//! written (launchd loads it at the next login); with `--start`: `launchctl bootout
//! gui/<uid>/dev.opencode-telemetry` when it is loaded (waiting until it is gone), then `launchctl
//! bootstrap gui/<uid> <plist>`. `uninstall`: `bootout` when loaded, then remove the file.
//!
//! # Both
//! Idempotent: a file whose content is already the rendered one is left alone and reported as
//! `unchanged`. Every action is printed (files written, each command run and its output).
//! `--dry-run` prints the rendered file on stdout and the plan on stderr, and touches nothing.
//! `uninstall` leaves the data dir (outbox, local sink file) and the config file alone and says
//! so. A failing `systemctl`/`launchctl` is an error (exit 1) that names the command and its
//! output and says how to finish by hand; files written before it stay written.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use crate::config::Loaded;

/// The systemd user unit template.
pub const SYSTEMD_UNIT: &str = include_str!("../../../systemd/opencode-telemetry.service");
/// The launchd agent template (`@BIN@` and `@HOME@` are its placeholders).
pub const LAUNCHD_PLIST: &str = include_str!("../../../launchd/dev.opencode-telemetry.plist");
/// The systemd unit's name.
pub const UNIT_NAME: &str = "opencode-telemetry.service";
/// The launchd job's label (and the plist's file name without `.plist`).
pub const LAUNCHD_LABEL: &str = "dev.opencode-telemetry";
/// The binary path the systemd template uses; replaced by the real command.
pub const TEMPLATE_BIN: &str = "%h/.cargo/bin/opencode-telemetry";

/// Which service manager to write for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Manager {
    /// A systemd user unit.
    Systemd,
    /// A launchd LaunchAgent.
    Launchd,
}

impl Manager {
    /// launchd on macOS, systemd elsewhere.
    pub fn native() -> Manager {
        if cfg!(target_os = "macos") {
            Manager::Launchd
        } else {
            Manager::Systemd
        }
    }
}

/// What `install` / `uninstall` were asked to do.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `install --start`: also start (or restart) the service now.
    pub start: bool,
    /// Print instead of acting.
    pub dry_run: bool,
    /// The service manager; `None` = [`Manager::native`].
    pub manager: Option<Manager>,
    /// The config file named on the command line (or by `OPENCODE_TELEMETRY_CONFIG`).
    pub config: Option<PathBuf>,
    /// `--db` as given on the command line.
    pub db: Option<PathBuf>,
}

/// The rendered service definition and everything it depends on.
#[derive(Debug)]
struct Plan {
    manager: Manager,
    /// Where the file goes.
    path: PathBuf,
    /// Its content.
    text: String,
    /// Directories that must exist before the service starts (systemd `ReadWritePaths=`; the
    /// launchd log directory).
    dirs: Vec<PathBuf>,
}

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

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("making {} absolute", p.display()))
}

fn home_dir() -> anyhow::Result<PathBuf> {
    directories::BaseDirs::new()
        .map(|b| b.home_dir().to_path_buf())
        .context("cannot tell the home directory (HOME unset?)")
}

/// `$XDG_CONFIG_HOME` when absolute, else `~/.config` (what the systemd user manager reads).
fn xdg_config_home(home: &Path) -> PathBuf {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| home.join(".config"))
}

fn service_path(manager: Manager, home: &Path) -> PathBuf {
    match manager {
        Manager::Systemd => xdg_config_home(home).join("systemd/user").join(UNIT_NAME),
        Manager::Launchd => home
            .join("Library/LaunchAgents")
            .join(format!("{LAUNCHD_LABEL}.plist")),
    }
}

fn launchd_log_dir(home: &Path) -> PathBuf {
    home.join("Library/Logs/opencode-telemetry")
}

/// Renders the file for `loaded` and `opts`.
fn plan(loaded: &Loaded, opts: &Options) -> anyhow::Result<Plan> {
    let manager = opts.manager.unwrap_or_else(Manager::native);
    let home = home_dir()?;
    let exe = std::env::current_exe().context("finding this binary")?;
    let bin = exe
        .canonicalize()
        .with_context(|| format!("resolving {}", exe.display()))?;
    let mut command = vec![bin];
    if let Some(c) = &opts.config {
        let c = c
            .canonicalize()
            .with_context(|| format!("resolving the config file {}", c.display()))?;
        command.extend([PathBuf::from("--config"), c]);
    }
    if let Some(db) = &opts.db {
        command.extend([PathBuf::from("--db"), absolute(db)?]);
    }
    let path = service_path(manager, &home);
    Ok(match manager {
        Manager::Systemd => {
            let c = &loaded.config;
            let mut writable = vec![absolute(&c.data_dir)?];
            if !c.uses_convex() {
                if let Some(dir) = absolute(&c.local.path)?.parent() {
                    writable.push(dir.to_path_buf());
                }
            }
            if let Some(dir) = absolute(&c.source.db_path)?.parent() {
                writable.push(dir.to_path_buf());
            }
            let writable = outermost(writable);
            Plan {
                manager,
                path,
                text: systemd_unit(&command, &writable)?,
                dirs: writable,
            }
        }
        Manager::Launchd => Plan {
            manager,
            path,
            text: launchd_plist(&command, &home),
            dirs: vec![launchd_log_dir(&home)],
        },
    })
}

/// What writing the file did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wrote {
    Created,
    Replaced,
    Unchanged,
}

fn compare(path: &Path, text: &str) -> Wrote {
    match std::fs::read(path) {
        Ok(old) if old == text.as_bytes() => Wrote::Unchanged,
        Ok(_) => Wrote::Replaced,
        Err(_) => Wrote::Created,
    }
}

/// A command to run: the program and its arguments, printable.
struct Cmd {
    program: &'static str,
    args: Vec<OsString>,
}

impl Cmd {
    fn new(program: &'static str, args: &[&str]) -> Cmd {
        Cmd {
            program,
            args: args.iter().map(OsString::from).collect(),
        }
    }

    fn arg(mut self, a: impl Into<OsString>) -> Cmd {
        self.args.push(a.into());
        self
    }

    fn shown(&self) -> String {
        let mut s = self.program.to_string();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    /// Runs it; `Ok(output)` on exit status 0, else an error with the status and the output.
    fn output(&self) -> anyhow::Result<String> {
        let out = Command::new(self.program)
            .args(&self.args)
            .output()
            .map_err(|e| anyhow!("cannot run `{}`: {e}", self.shown()))?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        let text = text.trim_end().to_string();
        if out.status.success() {
            Ok(text)
        } else {
            bail!(
                "`{}` failed ({}){}",
                self.shown(),
                out.status,
                if text.is_empty() {
                    String::new()
                } else {
                    format!(": {text}")
                }
            )
        }
    }

    /// Runs it and prints `ran: <command>` and its output, indented.
    fn run(&self) -> anyhow::Result<()> {
        let text = self.output()?;
        println!("ran: {}", self.shown());
        for line in text.lines() {
            println!("  {line}");
        }
        Ok(())
    }
}

fn systemctl(args: &[&str]) -> Cmd {
    let mut all = vec!["--user"];
    all.extend_from_slice(args);
    Cmd::new("systemctl", &all)
}

/// The commands `install` runs after writing the file.
fn systemd_install_cmds(start: bool, wrote: Wrote) -> Vec<Cmd> {
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

/// The `status` command for this install (with its `--config`).
fn status_cmd(opts: &Options) -> String {
    match &opts.config {
        Some(c) => format!("opencode-telemetry --config '{}' status", c.display()),
        None => "opencode-telemetry status".to_string(),
    }
}

/// `install`; see the module docs.
///
/// # Errors
/// Rendering (no home directory, an unwritable path), IO errors, and failing
/// `systemctl`/`launchctl` calls (after the file was written).
pub fn install(loaded: &Loaded, opts: &Options) -> anyhow::Result<ExitCode> {
    let plan = plan(loaded, opts)?;
    let wrote = compare(&plan.path, &plan.text);
    if opts.dry_run {
        print!("{}", plan.text);
        for dir in plan.dirs.iter().filter(|d| !d.is_dir()) {
            eprintln!("would create directory {}", dir.display());
        }
        eprintln!(
            "{} {}",
            match wrote {
                Wrote::Created => "would write",
                Wrote::Replaced => "would replace",
                Wrote::Unchanged => "would leave unchanged",
            },
            plan.path.display()
        );
        match plan.manager {
            Manager::Systemd => {
                for cmd in systemd_install_cmds(opts.start, wrote) {
                    eprintln!("would run: {}", cmd.shown());
                }
            }
            Manager::Launchd if opts.start => {
                eprintln!("would run: launchctl bootout gui/<uid>/{LAUNCHD_LABEL} (when loaded)");
                eprintln!(
                    "would run: launchctl bootstrap gui/<uid> {}",
                    plan.path.display()
                );
            }
            Manager::Launchd => {}
        }
        return Ok(ExitCode::SUCCESS);
    }

    for dir in &plan.dirs {
        if !dir.is_dir() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            println!("created directory {}", dir.display());
        }
    }
    match wrote {
        Wrote::Unchanged => println!("unchanged {} (already up to date)", plan.path.display()),
        Wrote::Created | Wrote::Replaced => {
            crate::daemon::ensure_parent(&plan.path)?;
            std::fs::write(&plan.path, &plan.text)
                .with_context(|| format!("writing {}", plan.path.display()))?;
            println!(
                "{} {}",
                if wrote == Wrote::Created {
                    "wrote"
                } else {
                    "replaced"
                },
                plan.path.display()
            );
        }
    }

    match plan.manager {
        Manager::Systemd => {
            let c = &loaded.config;
            let env_file = xdg_config_home(&home_dir()?).join("opencode-telemetry/env");
            if c.uses_convex() && c.convex.ingest_token.is_empty() && !env_file.exists() {
                println!(
                    "note: convex.url is set but no ingest token is configured; put \
                     OPENCODE_TELEMETRY_INGEST_TOKEN=... into {} (mode 0600) or the config \
                     file, or the service stops at check-config (exit 78)",
                    env_file.display()
                );
            }
            for cmd in systemd_install_cmds(opts.start, wrote) {
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
        }
        Manager::Launchd => {
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
            let logs = launchd_log_dir(&home_dir()?);
            println!(
                "logs: {}/err.log    state: {}",
                logs.display(),
                status_cmd(opts)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `uninstall`; see the module docs.
///
/// # Errors
/// IO errors and failing `systemctl`/`launchctl` calls (the file is then left in place).
pub fn uninstall(loaded: &Loaded, opts: &Options) -> anyhow::Result<ExitCode> {
    let manager = opts.manager.unwrap_or_else(Manager::native);
    let home = home_dir()?;
    let path = service_path(manager, &home);
    let dry = opts.dry_run;
    let act = |cmd: Cmd| -> anyhow::Result<()> {
        if dry {
            println!("would run: {}", cmd.shown());
            Ok(())
        } else {
            cmd.run().map_err(|e| {
                anyhow!(
                    "{e:#}\nNothing was removed; {} is still in place.",
                    path.display()
                )
            })
        }
    };
    let installed = path.exists();
    match manager {
        Manager::Systemd => {
            if installed {
                act(systemctl(&["disable", "--now", UNIT_NAME]))?;
            }
        }
        Manager::Launchd => {
            let target = format!("gui/{}/{LAUNCHD_LABEL}", uid()?);
            if launchd_loaded(&target) {
                act(Cmd::new("launchctl", &["bootout", &target]))?;
            }
        }
    }
    if installed {
        if dry {
            println!("would remove {}", path.display());
        } else {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            println!("removed {}", path.display());
        }
        if manager == Manager::Systemd {
            act(systemctl(&["daemon-reload"]))?;
        }
    } else {
        println!("{} does not exist: not installed", path.display());
    }
    println!(
        "left alone: the data dir {} (outbox, local sink file){}{}",
        loaded.config.data_dir.display(),
        loaded
            .path
            .as_ref()
            .map(|c| format!(", the config file {}", c.display()))
            .unwrap_or_default(),
        if manager == Manager::Launchd {
            format!(", the logs in {}", launchd_log_dir(&home).display())
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
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
            "\nExecStartPre=/opt/bin/opencode-telemetry --config \"/home/u/my 100%% $$cfg.toml\" check-config\n"
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

    #[test]
    fn install_commands_follow_start_and_what_changed() {
        let shown = |start, wrote| {
            systemd_install_cmds(start, wrote)
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
