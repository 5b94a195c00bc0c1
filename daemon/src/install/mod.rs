//! `install` and `uninstall`: the user service definition, written with this binary's real path,
//! for systemd ([`systemd`]: Linux and every other non-macOS system) or launchd ([`launchd`]:
//! macOS); each manager's file, commands and messages are in its module.
//!
//! # Both
//! Idempotent: a file whose content is already the rendered one is left alone and reported as
//! `unchanged`. Every action is printed (files written, each command run and its output).
//! `--dry-run` prints the rendered file on stdout and the plan on stderr, and touches nothing.
//! `uninstall` leaves the data dir (outbox, local store) and the config file alone and says
//! so. A failing `systemctl`/`launchctl` is an error (exit 1) that names the command and its
//! output and says how to finish by hand; files written before it stay written.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{anyhow, bail, Context};

use crate::config::Loaded;

pub mod launchd;
pub mod systemd;

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

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("making {} absolute", p.display()))
}

fn home_dir() -> anyhow::Result<PathBuf> {
    directories::BaseDirs::new()
        .map(|b| b.home_dir().to_path_buf())
        .context("cannot tell the home directory (HOME unset?)")
}

fn service_path(manager: Manager, home: &Path) -> PathBuf {
    match manager {
        Manager::Systemd => systemd::unit_path(home),
        Manager::Launchd => launchd::plist_path(home),
    }
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
            let (text, dirs) = systemd::render(loaded, &command)?;
            Plan {
                manager,
                path,
                text,
                dirs,
            }
        }
        Manager::Launchd => Plan {
            manager,
            path,
            text: launchd::launchd_plist(&command, &home),
            dirs: vec![launchd::log_dir(&home)],
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
                for cmd in systemd::install_cmds(opts.start, wrote) {
                    eprintln!("would run: {}", cmd.shown());
                }
            }
            Manager::Launchd => launchd::dry_run(opts, &plan),
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
        Manager::Systemd => systemd::activate(loaded, opts, &plan, wrote)?,
        Manager::Launchd => launchd::activate(opts, &plan)?,
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
    // As for `install --dry-run`: what would be done goes to stderr, what was done to stdout.
    let say = |line: String| {
        if dry {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    let act = |cmd: Cmd| -> anyhow::Result<()> {
        if dry {
            eprintln!("would run: {}", cmd.shown());
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
    let stop = match manager {
        Manager::Systemd if installed => systemd::deactivate_cmds(),
        Manager::Systemd => Vec::new(),
        Manager::Launchd => launchd::deactivate_cmds()?,
    };
    for cmd in stop {
        act(cmd)?;
    }
    if installed {
        if dry {
            eprintln!("would remove {}", path.display());
        } else {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            println!("removed {}", path.display());
        }
        if manager == Manager::Systemd {
            for cmd in systemd::forget_cmds() {
                act(cmd)?;
            }
        }
    } else {
        say(format!("{} does not exist: not installed", path.display()));
    }
    say(format!(
        "left alone: the data dir {} (outbox, local store){}{}",
        loaded.config.data_dir.display(),
        loaded
            .path
            .as_ref()
            .map(|c| format!(", the config file {}", c.display()))
            .unwrap_or_default(),
        if manager == Manager::Launchd {
            format!(", the logs in {}", launchd::log_dir(&home).display())
        } else {
            String::new()
        }
    ));
    Ok(ExitCode::SUCCESS)
}
