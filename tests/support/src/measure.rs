//! Resource use of a child process, as the kernel counts it: CPU time and peak resident set
//! size from `wait4(2)`'s `rusage`, and the resident set of a running process from
//! `/proc/<pid>/status` (`VmRSS`, `VmHWM`) and `/proc/<pid>/stat` (CPU ticks). Linux only.
//!
//! The one `unsafe` of the workspace is here, in a dev-only crate: std has no `wait4`, and a
//! child's peak RSS can only be read from it (after exit `/proc` has nothing left).
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

/// Runs `cmd` to its end and returns what it used (its own use, not its children's).
pub fn run(cmd: &mut Command) -> Usage {
    let child = cmd.spawn().expect("spawn the measured command");
    wait(child)
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
