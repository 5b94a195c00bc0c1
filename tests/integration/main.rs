//! Integration tests: the real binary on real OpenCode databases.
//!
//! One test crate (ripgrep's layout): each module below is an area; `support` is the harness.

mod support;

/// The invariants of ARCHITECTURE.md, checked on the source tree.
mod architecture;
/// Configuration errors: exit 78, naming the key and the file.
mod config_errors;
/// The real binary → HTTP → the project's Convex functions (convex-test behind an HTTP shim) →
/// query back.
mod convex_e2e;
/// Every token and dollar counted once: forks, reverts, subagents' models and tools, against
/// independent SQL on the kinds fixture.
mod counting;
/// Delivery under faults and crashes: the real daemon, SIGKILL/SIGTERM, and a fault-injecting
/// HTTP server on 127.0.0.1.
mod delivery_faults;
/// Per-device credentials: `login` against the Convex functions, `run` delivering as that
/// device, `check-config` / `status` naming it, out-of-range source values corrected.
mod device_login;
/// Every shape OpenCode treats as the end of a turn (shell commands, `noReply` prompts…) against its event log.
mod endings;
/// Real OpenCode 1.18.33, driven live: exports compared with its own event stream.
mod live_opencode;
/// Peak memory of `once` and `run` on a generated history, as the kernel counts it.
mod memory;
/// `once` on the bundled OpenCode 1.18.33 database, checked against independent SQL.
mod once_fixture;
/// \`[privacy]\`: the fields each level sends, planted secrets found nowhere, \`preview\`.
mod privacy;
/// Replaying OpenCode's own event log into a database: the tracker's exports agree with the
/// moments OpenCode published.
mod replay;
/// The local store and `report` / `export`: each view against independent SQL, one row per
/// session, each sink receiving while the other is down, golden tables.
mod report;
/// `run` as a process: missing database, todo rule, stale turns, restarts, deletions while
/// down, malformed rows.
mod run_daemon;
/// systemd's notification protocol (READY=1, WATCHDOG=1, STOPPING=1) on a real socket.
mod sd_notify;
/// `install` / `uninstall`: the unit (systemd-analyze verify), the plist (plistlib), the
/// systemctl/launchctl calls.
mod service_install;
/// The daemon as a service: SIGINT mid-drain, SIGHUP valid and invalid, log formats, progress
/// bars only on a terminal, and the ingest token in no output or file.
mod service_runtime;
/// Reading a live WAL database leaves its three files byte-identical.
mod wal_readonly;
