//! The real daemon (`opencode-telemetry run`) as a child process: started with a clean
//! environment, its stderr appended to a log file, stopped with SIGTERM (through the `kill`
//! command: the crate forbids `unsafe`) or SIGKILL, and always killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{command, Scratch};

/// A running `opencode-telemetry run`; killed (SIGKILL) and reaped on drop.
pub struct Daemon {
    child: Child,
    /// The file stdout and stderr are appended to (shared by every start in a test).
    pub log: PathBuf,
    log_start: u64,
    /// When it was started.
    pub started: Instant,
}

impl Daemon {
    /// Starts `run` with `--config config`, the ingest token in the environment and `args`
    /// appended; output goes to `log` (appended).
    pub fn start(
        scratch: &Scratch,
        config: &Path,
        token: &str,
        log: &Path,
        args: &[&str],
    ) -> Daemon {
        let mut cmd = command(scratch);
        cmd.env("OPENCODE_TELEMETRY_INGEST_TOKEN", token)
            .arg("--config")
            .arg(config)
            .arg("run")
            .args(args);
        Daemon::spawn(cmd, log)
    }

    /// Starts `run --db db --transitions-log <scratch>/transitions.jsonl` with `--config config`,
    /// logging at `info` into `<scratch>/daemon.log` (no token: for the local sink).
    pub fn start_local(scratch: &Scratch, config: &Path, db: &Path) -> Daemon {
        let mut cmd = command(scratch);
        cmd.env("RUST_LOG", "info")
            .arg("--config")
            .arg(config)
            .arg("--db")
            .arg(db)
            .arg("run")
            .arg("--transitions-log")
            .arg(scratch.path("transitions.jsonl"));
        Daemon::spawn(cmd, &scratch.path("daemon.log"))
    }

    /// Starts an arbitrary prepared command the same way.
    pub fn spawn(mut cmd: Command, log: &Path) -> Daemon {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let log_start = file.metadata().unwrap().len();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("starting the daemon");
        Daemon {
            child,
            log: log.to_path_buf(),
            log_start,
            started: Instant::now(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What this start wrote to the log so far.
    pub fn output(&self) -> String {
        let all = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(&all[(self.log_start as usize).min(all.len())..]).into_owned()
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`, …) with the `kill` command.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// The exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits up to `limit` for it to exit; `None` when it is still running.
    pub fn wait_for_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) -> ExitStatus {
        self.child.kill().ok();
        self.child.wait().unwrap()
    }

    /// SIGTERM, then waits up to `limit`; returns the status and how long the exit took.
    /// Panics with the log when it does not exit in time.
    pub fn terminate(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let t = Instant::now();
        self.signal("TERM");
        match self.wait_for_exit(limit) {
            Some(s) => (s, t.elapsed()),
            None => {
                self.kill9();
                panic!(
                    "the daemon did not exit within {limit:?} of SIGTERM\n{}",
                    self.output()
                );
            }
        }
    }

    /// Resident set size (KiB) from `/proc/<pid>/status`; `None` once it has exited or off Linux.
    pub fn rss_kib(&self) -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }

    /// Open file descriptors, from `/proc/<pid>/fd`.
    pub fn open_fds(&self) -> Option<usize> {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .ok()
            .map(|d| d.count())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.child.kill().ok();
            self.child.wait().ok();
        }
    }
}
