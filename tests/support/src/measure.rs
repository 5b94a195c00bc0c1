//! Resource use of a child process, as the kernel counts it: CPU time and peak resident set
//! size from `wait4(2)`'s `rusage`, and the resident set of a running process from
//! `/proc/<pid>/status` (`VmRSS`, `VmHWM`) and `/proc/<pid>/stat` (CPU ticks). Linux only.
//!
//! The one `unsafe` of the workspace is here, in a dev-only crate: std has no `wait4`, and a
//! child's peak RSS can only be read from it (after exit `/proc` has nothing left).
//!
//! **A child's `ru_maxrss` includes its parent's resident set at the fork**: the kernel keeps
//! the high-water mark of the image the child had before `execve` (a copy of the parent's,
//! or the parent's own with `vfork`/`posix_spawn`). Spawned from a test harness that holds a
//! few hundred MiB (other tests' data, in parallel), a program that never used more than
//! 50 MiB reports 250. [`run`] therefore starts the measured program from a small launcher
//! (`python3`, a few MiB), which forks it, waits for it and reports its `rusage`.
#![allow(unsafe_code)]

use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

/// What a finished child used.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// How it exited.
    pub status: ExitStatus,
    /// User CPU time.
    pub user: Duration,
    /// System CPU time.
    pub system: Duration,
    /// Peak resident set size (bytes; `ru_maxrss` is in KiB).
    pub max_rss_bytes: u64,
}

impl Usage {
    /// User + system CPU time.
    pub fn cpu(&self) -> Duration {
        self.user + self.system
    }
}

/// The launcher [`run`] starts: forks `argv[2:]`, waits, writes `status maxrss utime stime`
/// to the file `argv[1]`.
const LAUNCHER: &str = r#"
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{status} {ru.ru_maxrss} {ru.ru_utime} {ru.ru_stime}\n")
"#;

/// Runs `cmd` to its end and returns what it used (its own use, not its children's),
/// started from a small launcher so that its peak RSS is its own (see the module docs).
///
/// `cmd` runs with only the environment variables it sets (as after `env_clear`) and in its
/// current directory; its stdio settings cannot be read from a `Command`, so its stdin,
/// stdout and stderr are null.
pub fn run(cmd: &mut Command) -> Usage {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    use std::sync::atomic::{AtomicU64, Ordering};
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let report = std::env::temp_dir().join(format!(
        "measure-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    ));
    let mut launcher = Command::new("python3");
    launcher
        .arg("-c")
        .arg(LAUNCHER)
        .arg(&report)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            launcher.env(key, value);
        }
    }
    if let Some(dir) = cmd.get_current_dir() {
        launcher.current_dir(dir);
    }
    let status = launcher
        .status()
        .expect("run python3 (the measuring launcher)");
    assert!(status.success(), "the measuring launcher failed: {status}");
    let text = std::fs::read_to_string(&report).expect("the launcher's report");
    let _ = std::fs::remove_file(&report);
    let fields: Vec<&str> = text.split_whitespace().collect();
    let secs = |s: &str| Duration::from_secs_f64(s.parse().expect("seconds"));
    Usage {
        status: ExitStatus::from_raw(fields[0].parse().expect("a wait status")),
        max_rss_bytes: fields[1].parse::<u64>().expect("KiB") * 1024,
        user: secs(fields[2]),
        system: secs(fields[3]),
    }
}

/// Waits for `child` (never call `Child::wait` on it as well) and returns what it used.
pub fn wait(child: Child) -> Usage {
    use std::os::unix::process::ExitStatusExt;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data that wait4 fills; the pid is our own child's.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4: {}", std::io::Error::last_os_error());
    // The child is reaped: forget it so its Drop does not touch the pid again.
    std::mem::forget(child);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Usage {
        status: ExitStatus::from_raw(status),
        user: tv(usage.ru_utime),
        system: tv(usage.ru_stime),
        max_rss_bytes: usage.ru_maxrss as u64 * 1024,
    }
}

/// A running process's `VmRSS` and `VmHWM` (bytes), from `/proc/<pid>/status`.
pub fn rss_and_peak(pid: u32) -> (u64, u64) {
    (status_bytes(pid, "VmRSS"), status_bytes(pid, "VmHWM"))
}

/// One `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, `RssFile`, …) in bytes; 0 when
/// the process or the field is not there.
pub fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// A running process's CPU time so far (user + system), from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // USER_HZ: 100 on every Linux ABI this runs on.
    let t = ticks(11) + ticks(12);
    Duration::from_millis(t * 10)
}
