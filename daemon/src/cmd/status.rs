//! `status`: what the daemon is doing, read without stopping it.
//!
//! A running daemon keeps `<data_dir>/status.json` current (see [`crate::daemon::status_file`]):
//! its pid and start time, the config file and OpenCode database in use, the sink, the outbox
//! depth (pending, dead letters), the last delivery, the last error, the last export per
//! trigger (`session.idle`, `session.error`, `session.deleted`, `stale`) and the outcome of
//! the last SIGHUP, and which device the deployment's `GET /whoami` named this machine when the
//! daemon started (`device`: status itself makes no request, so it stays offline and read-only;
//! the answer stays in the file after the daemon stops). `status` reads that file when its pid is alive (it never takes the outbox's
//! lock, so a daemon starting at that moment is not refused). When no daemon runs it says so
//! and opens the outbox itself; the last exports then come from the outbox's `state` tree,
//! where every commit records them.
//!
//! `status --json` prints the same as one JSON object (times in epoch ms, sizes in bytes):
//! ```text
//! {"daemon":{"running":true,"pid":…,"startedAt":…,"version":…,"configPath":…|null,
//!            "lastReload":{"at":…,"applied":…,"message":…}|null,"sourceProblem":…|null}
//!           | {"running":false},
//!  "figuresFrom":"status file"|"outbox","figuresAt":<ms>,
//!  "sink":…,"dbPath":…,"dataDir":…,
//!  "device":{"at":<ms>,"name":…,"deviceId":…,"answer":…}|null,
//!  "outbox":{"pendingCount":…,"pendingBytes":…,"maxBytes":…,"oldestEnqueuedAt":…|null,"deadCount":…,
//!            "lanes":[{"lane":"store"|"convex"|"ndjson","pendingCount":…,"oldestEnqueuedAt":…|null,
//!                      "deadCount":…,"lastDeliveryAt":…|null,"lastError":{…}|null,
//!                      "ackedTotal":…,"deadLetteredTotal":…},…]},
//!  "lastDeliveryAt":…|null,"lastError":{"message":…,"at":…}|null,
//!  "lastExports":{"session.idle":{"sessionId":…,"at":…},…},"heldDeletions":…}
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;

use serde_json::json;

use crate::clock::now_ms;
use crate::config::Config;
use crate::daemon::status_file::{read_status, DeviceSeen, LastExport, StatusSnapshot};
use crate::daemon::{open_outbox_keeping, sink_description, LAST_EXPORT_PREFIX};
use crate::queue::Outbox;

/// Where the figures came from.
struct Gathered {
    snapshot: StatusSnapshot,
    /// The daemon runs (its status file was read).
    running: bool,
    last_exports: BTreeMap<String, LastExport>,
    /// Deletions held (see [`crate::track::rules::hold_deletions`]).
    held_deletions: usize,
    /// The deployment's last `/whoami` answer to a daemon of this data dir (from the status
    /// file, also after that daemon stopped).
    device: Option<DeviceSeen>,
}

/// `status` (human-readable) or `status --json`.
///
/// # Errors
/// Outbox failures other than the lock.
pub fn status(config: &Config, as_json: bool, check: bool) -> anyhow::Result<ExitCode> {
    let g = gather(config)?;
    let now = now_ms();
    if check {
        let problems = problems(&g, now);
        if problems.is_empty() {
            println!("ok");
            return Ok(ExitCode::SUCCESS);
        }
        println!("unhealthy: {}", crate::cmd::escape(&problems.join("; ")));
        return Ok(ExitCode::FAILURE);
    }
    if as_json {
        println!("{}", render_json(config, &g));
    } else {
        print!("{}", render_text(config, &g, now));
    }
    Ok(ExitCode::SUCCESS)
}

fn gather(config: &Config) -> anyhow::Result<Gathered> {
    // A running daemon keeps `status.json` current; reading it leaves the outbox's lock alone
    // (a daemon starting right now must not find it taken).
    let from_file = |s: StatusSnapshot| Gathered {
        held_deletions: s.daemon.as_ref().map_or(0, |d| d.held_deletions),
        last_exports: s
            .daemon
            .as_ref()
            .map(|d| d.last_exports.clone())
            .unwrap_or_default(),
        device: s.daemon.as_ref().and_then(|d| d.device.clone()),
        snapshot: s,
        running: true,
    };
    let last_device = || {
        read_status(&config.data_dir)
            .and_then(|s| s.daemon)
            .and_then(|d| d.device)
    };
    if let Some(s) = read_status(&config.data_dir).filter(|s| process_alive(s.pid)) {
        return Ok(from_file(s));
    }
    if !config.data_dir.join(crate::queue::QUEUE_DIR_NAME).exists() {
        // No daemon ever ran here: nothing to show, and a read-only command creates nothing.
        return Ok(Gathered {
            snapshot: StatusSnapshot {
                pid: 0,
                written_at_ms: crate::clock::now_ms(),
                queue: crate::queue::QueueStats {
                    max_bytes: config.queue.max_bytes,
                    ..Default::default()
                },
                daemon: None,
            },
            running: false,
            last_exports: BTreeMap::new(),
            held_deletions: 0,
            device: last_device(),
        });
    }
    match open_outbox_keeping(config) {
        Ok(outbox) => Ok(Gathered {
            snapshot: StatusSnapshot::now(&outbox, None)?,
            running: false,
            last_exports: last_exports(&outbox),
            held_deletions: crate::daemon::held_deletions(&outbox)?,
            device: last_device(),
        }),
        // Locked: a daemon runs (off Linux, where its pid cannot be checked cheaply).
        Err(e) => match read_status(&config.data_dir) {
            Some(s) => Ok(from_file(s)),
            None => Err(e),
        },
    }
}

/// How long records may wait while deliveries fail before `status --check` calls it a problem.
pub const DELIVERY_FAILING_AFTER_MS: i64 = 10 * 60 * 1000;

/// What `status --check` reports, one short phrase each (none: healthy).
fn problems(g: &Gathered, now: i64) -> Vec<String> {
    let s = &g.snapshot;
    let q = &s.queue;
    let mut out = Vec::new();
    if !g.running {
        out.push("the daemon is not running".to_string());
    }
    if q.dead_count > 0 {
        out.push(format!(
            "{} dead letter(s) (`opencode-telemetry queue list`)",
            q.dead_count
        ));
    }
    if let (Some(oldest), Some(e)) = (q.oldest_enqueued_at_ms, &q.last_error) {
        let failing = q.last_delivery_at_ms.is_none_or(|d| e.at_ms > d);
        if failing && now - oldest > DELIVERY_FAILING_AFTER_MS {
            out.push(format!(
                "{} record(s) waiting for {} min while deliveries fail: {}",
                q.pending_count,
                (now - oldest) / 60_000,
                e.message
            ));
        }
    }
    if g.held_deletions > 0 {
        out.push(format!("{} held deletion(s)", g.held_deletions));
    }
    if let Some(p) = s.daemon.as_ref().and_then(|d| d.source_problem.as_ref()) {
        out.push(format!("source: {p}"));
    }
    out
}

/// The last export per trigger as recorded in the outbox's `state` tree.
pub(crate) fn last_exports(outbox: &Outbox) -> BTreeMap<String, LastExport> {
    outbox
        .state_scan(LAST_EXPORT_PREFIX)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| {
            let trigger = String::from_utf8(k.strip_prefix(LAST_EXPORT_PREFIX)?.to_vec()).ok()?;
            Some((trigger, serde_json::from_slice(&v).ok()?))
        })
        .collect()
}

/// Whether an opencode-telemetry process with this id runs (Linux: `/proc/<pid>/cmdline`, so a
/// pid reused by another program does not count; elsewhere unknown, so false and `status` opens
/// the outbox itself).
fn process_alive(pid: u32) -> bool {
    if !cfg!(target_os = "linux") || pid == std::process::id() {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmdline| String::from_utf8_lossy(&cmdline).contains("opencode-telemetry"))
        .unwrap_or(false)
}

/// "12s ago", or "never".
pub(crate) fn ago(now: i64, at: Option<i64>) -> String {
    match at {
        Some(at) => format!("{}s ago", (now - at).max(0) / 1000),
        None => "never".to_string(),
    }
}

fn render_text(config: &Config, g: &Gathered, now: i64) -> String {
    let s = &g.snapshot;
    let daemon = s.daemon.as_ref().filter(|_| g.running);
    let mut out = String::new();
    // Every value is escaped: the status file's strings (errors, session ids, paths) come from
    // outside.
    let mut line = |label: &str, value: String| {
        out.push_str(&format!(
            "{:<16} {}\n",
            format!("{label}:"),
            crate::cmd::escape(&value)
        ));
    };
    line(
        "sink",
        daemon.map_or_else(|| sink_description(config), |d| d.sink.clone()),
    );
    line(
        "opencode db",
        daemon
            .map_or(&config.source.db_path, |d| &d.db_path)
            .display()
            .to_string(),
    );
    line("data dir", config.data_dir.display().to_string());
    if let Some(d) = &g.device {
        line(
            "device",
            format!(
                "{} (the deployment's answer {}{})",
                d.answer,
                ago(now, Some(d.at_ms)),
                if g.running {
                    ""
                } else {
                    ", when the daemon last ran"
                }
            ),
        );
    } else if config.uses_convex() {
        line(
            "device",
            "not known yet (the daemon asks the deployment when it starts; \
             `opencode-telemetry check-config` asks now)"
                .to_string(),
        );
    }
    let age = (now - s.written_at_ms).max(0) / 1000;
    line(
        "daemon",
        match (g.running, daemon) {
            (true, Some(d)) => format!(
                "running, pid {} since {} (version {}; figures from its status file, {age}s old)",
                s.pid,
                ago(now, Some(d.started_at_ms)),
                d.version
            ),
            (true, None) => format!(
                "running, pid {} (figures from its status file, {age}s old)",
                s.pid
            ),
            (false, _) => "not running (outbox opened directly)".to_string(),
        },
    );
    if let Some(d) = daemon {
        line(
            "config file",
            d.config_path
                .as_ref()
                .map_or("none (built-in defaults)".to_string(), |p| {
                    p.display().to_string()
                }),
        );
        if let Some(p) = &d.source_problem {
            line("source", format!("WARNING: {p}"));
        }
        if let Some(r) = &d.last_reload {
            line(
                "last reload",
                format!(
                    "{} {}: {}",
                    if r.applied { "applied" } else { "REJECTED" },
                    ago(now, Some(r.at_ms)),
                    r.message
                ),
            );
        }
    }
    line(
        "pending",
        format!(
            "{} ({} bytes of {} max)",
            s.queue.pending_count, s.queue.pending_bytes, s.queue.max_bytes
        ),
    );
    line(
        "oldest pending",
        match s.queue.oldest_enqueued_at_ms {
            Some(_) => format!("queued {}", ago(now, s.queue.oldest_enqueued_at_ms)),
            None => "none".to_string(),
        },
    );
    line("dead letters", s.queue.dead_count.to_string());
    // Each sink's own lane: what it has still to deliver, its dead letters, its last delivery
    // and error.
    for l in &s.queue.lanes {
        line(
            &format!("  {}", l.lane),
            format!(
                "{} pending{}, {} dead, last delivery {}{}",
                l.pending_count,
                match l.oldest_enqueued_at_ms {
                    Some(_) => format!(" (oldest queued {})", ago(now, l.oldest_enqueued_at_ms)),
                    None => String::new(),
                },
                l.dead_count,
                ago(now, l.last_delivery_at_ms),
                match &l.last_error {
                    Some(e) => format!(", last error {} ({})", e.message, ago(now, Some(e.at_ms))),
                    None => String::new(),
                }
            ),
        );
    }
    if g.held_deletions > 0 {
        line(
            "held deletions",
            format!(
                "WARNING: {}: {}",
                g.held_deletions,
                crate::daemon::HELD_ADVICE
            ),
        );
    }
    line("last delivery", ago(now, s.queue.last_delivery_at_ms));
    line(
        "last error",
        match &s.queue.last_error {
            Some(e) => format!("{} ({})", e.message, ago(now, Some(e.at_ms))),
            None => "none".to_string(),
        },
    );
    for trigger in ["session.idle", "session.error", "session.deleted", "stale"] {
        let label = format!("exported {}", trigger.trim_start_matches("session."));
        line(
            &label,
            match g.last_exports.get(trigger) {
                Some(e) => format!("{} ({})", e.session_id, ago(now, Some(e.at_ms))),
                None => "never".to_string(),
            },
        );
    }
    out
}

fn render_json(config: &Config, g: &Gathered) -> serde_json::Value {
    let s = &g.snapshot;
    let daemon = s.daemon.as_ref().filter(|_| g.running);
    let daemon_json = match (g.running, daemon) {
        (true, Some(d)) => json!({
            "running": true,
            "pid": s.pid,
            "startedAt": d.started_at_ms,
            "version": d.version,
            "configPath": d.config_path,
            "lastReload": d.last_reload,
            "sourceProblem": d.source_problem,
        }),
        (true, None) => json!({ "running": true, "pid": s.pid }),
        (false, _) => json!({ "running": false }),
    };
    json!({
        "daemon": daemon_json,
        "figuresFrom": if g.running { "status file" } else { "outbox" },
        "figuresAt": s.written_at_ms,
        "sink": daemon.map_or_else(|| sink_description(config), |d| d.sink.clone()),
        "dbPath": daemon.map_or(&config.source.db_path, |d| &d.db_path),
        "dataDir": config.data_dir,
        "device": g.device,
        "outbox": {
            "pendingCount": s.queue.pending_count,
            "pendingBytes": s.queue.pending_bytes,
            "maxBytes": s.queue.max_bytes,
            "oldestEnqueuedAt": s.queue.oldest_enqueued_at_ms,
            "deadCount": s.queue.dead_count,
            "lanes": s.queue.lanes.iter().map(|l| json!({
                "lane": l.lane.as_str(),
                "pendingCount": l.pending_count,
                "oldestEnqueuedAt": l.oldest_enqueued_at_ms,
                "deadCount": l.dead_count,
                "lastDeliveryAt": l.last_delivery_at_ms,
                "lastError": l.last_error.as_ref().map(|e| json!({"message": e.message, "at": e.at_ms})),
                "ackedTotal": l.acked_total,
                "deadLetteredTotal": l.dead_lettered_total,
            })).collect::<Vec<_>>(),
        },
        "lastDeliveryAt": s.queue.last_delivery_at_ms,
        "lastError": s.queue.last_error.as_ref().map(|e| json!({"message": e.message, "at": e.at_ms})),
        "lastExports": g.last_exports,
        "heldDeletions": g.held_deletions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::status_file::DaemonInfo;
    use crate::queue::{LastError, QueueStats};

    fn snapshot(daemon: Option<DaemonInfo>) -> StatusSnapshot {
        StatusSnapshot {
            pid: 4242,
            written_at_ms: 1_000_000,
            queue: QueueStats {
                pending_count: 3,
                pending_bytes: 900,
                max_bytes: 1 << 20,
                oldest_enqueued_at_ms: Some(990_000),
                dead_count: 1,
                last_delivery_at_ms: Some(995_000),
                last_error: Some(LastError {
                    message: "HTTP 503".into(),
                    at_ms: 998_000,
                }),
                ..QueueStats::default()
            },
            daemon,
        }
    }

    #[test]
    fn a_running_daemon_shows_its_own_db_sink_and_last_exports() {
        let mut config = Config::default();
        config.source.db_path = "/from/the/status/command.db".into();
        let mut last_exports = BTreeMap::new();
        last_exports.insert(
            "session.deleted".to_string(),
            LastExport {
                session_id: "ses_gone".into(),
                at_ms: 940_000,
            },
        );
        let info = DaemonInfo {
            started_at_ms: 880_000,
            version: "9.9.9".into(),
            config_path: Some("/etc/c.toml".into()),
            db_path: "/in/use/opencode.db".into(),
            sink: "convex https://x.convex.cloud".into(),
            last_exports: last_exports.clone(),
            last_reload: None,
            source_problem: Some("/in/use/opencode.db: no `part` table".into()),
            held_deletions: 30,
            device: None,
        };
        let device = DeviceSeen {
            at_ms: 990_000,
            name: Some("work-laptop".into()),
            device_id: Some("abc".into()),
            answer: "device `work-laptop` (device id abc)".into(),
        };
        let g = Gathered {
            snapshot: snapshot(Some(info)),
            running: true,
            last_exports,
            held_deletions: 30,
            device: Some(device),
        };
        let text = render_text(&config, &g, 1_000_000);
        assert!(
            text.contains("opencode db:     /in/use/opencode.db\n"),
            "{text}"
        );
        assert!(text.contains("sink:            convex https://x.convex.cloud\n"));
        assert!(text.contains("running, pid 4242 since 120s ago (version 9.9.9"));
        assert!(text.contains("pending:         3 (900 bytes of 1048576 max)\n"));
        assert!(text.contains("dead letters:    1\n"));
        assert!(
            text.contains("exported deleted: ses_gone (60s ago)\n"),
            "{text}"
        );
        assert!(text.contains("exported idle:   never\n"), "{text}");
        assert!(text.contains("last error:      HTTP 503 (2s ago)\n"));
        assert!(
            text.contains("source:          WARNING: /in/use/opencode.db: no `part` table\n"),
            "{text}"
        );

        let v = render_json(&config, &g);
        assert_eq!(v["daemon"]["pid"], 4242);
        assert_eq!(v["daemon"]["startedAt"], 880_000);
        assert_eq!(v["dbPath"], "/in/use/opencode.db");
        assert_eq!(v["outbox"]["pendingCount"], 3);
        assert_eq!(v["outbox"]["deadCount"], 1);
        assert_eq!(v["lastExports"]["session.deleted"]["sessionId"], "ses_gone");
        assert_eq!(v["lastExports"]["session.deleted"]["at"], 940_000);
        assert_eq!(v["lastError"]["message"], "HTTP 503");
        assert!(
            text.contains("held deletions:  WARNING: 30: if you deleted those sessions"),
            "{text}"
        );
        assert_eq!(v["heldDeletions"], 30);
        assert!(
            text.contains(
                "device:          device `work-laptop` (device id abc) (the deployment's answer 10s ago)\n"
            ),
            "{text}"
        );
        assert_eq!(v["device"]["name"], "work-laptop");
        assert_eq!(v["device"]["deviceId"], "abc");
        assert_eq!(
            v["daemon"]["sourceProblem"],
            "/in/use/opencode.db: no `part` table"
        );
    }

    #[test]
    fn without_a_daemon_the_config_says_what_would_be_used() {
        let mut config = Config::default();
        config.source.db_path = "/cfg/opencode.db".into();
        let g = Gathered {
            snapshot: snapshot(None),
            running: false,
            last_exports: BTreeMap::new(),
            held_deletions: 0,
            device: None,
        };
        let text = render_text(&config, &g, 1_000_000);
        assert!(text.contains("daemon:          not running"), "{text}");
        assert!(
            text.contains("opencode db:     /cfg/opencode.db\n"),
            "{text}"
        );
        let v = render_json(&config, &g);
        assert_eq!(v["daemon"]["running"], false);
        assert_eq!(v["figuresFrom"], "outbox");
    }

    #[test]
    fn values_from_outside_are_printed_with_control_characters_escaped() {
        let config = Config::default();
        let mut snap = snapshot(None);
        snap.queue.last_error = Some(LastError {
            message: "HTTP 500: \u{1b}[2J\u{1b}]0;owned\u{7}\nlast delivery: just now".into(),
            at_ms: 998_000,
        });
        let mut last_exports = BTreeMap::new();
        last_exports.insert(
            "session.idle".to_string(),
            LastExport {
                session_id: "ses_\u{1b}[31mx".into(),
                at_ms: 990_000,
            },
        );
        let g = Gathered {
            snapshot: snap,
            running: false,
            last_exports,
            held_deletions: 0,
            device: None,
        };
        let text = render_text(&config, &g, 1_000_000);
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{text:?}"
        );
        assert!(
            text.contains(r"HTTP 500: \u{1b}[2J\u{1b}]0;owned\u{7}\nlast delivery: just now"),
            "{text}"
        );
        assert!(text.contains(r"ses_\u{1b}[31mx"), "{text}");
        // Each label still starts its own line: the forged one does not.
        assert_eq!(text.matches("\nlast delivery:").count(), 1, "{text}");
    }

    /// `status --check`'s reasons, case by case: (what, change to a healthy state) → reasons.
    #[test]
    fn check_reports_each_problem_and_nothing_when_healthy() {
        let healthy = || {
            let mut snap = snapshot(None);
            snap.queue.dead_count = 0;
            snap.queue.last_error = None;
            Gathered {
                snapshot: snap,
                running: true,
                last_exports: BTreeMap::new(),
                held_deletions: 0,
                device: None,
            }
        };
        let now = 1_000_000;
        type Change = fn(&mut Gathered);
        let cases: [(&str, Change, &str); 6] = [
            ("healthy", |_| {}, ""),
            (
                "not running",
                |g| g.running = false,
                "the daemon is not running",
            ),
            (
                "dead letters",
                |g| g.snapshot.queue.dead_count = 2,
                "2 dead letter(s) (`opencode-telemetry queue list`)",
            ),
            (
                "held deletions",
                |g| g.held_deletions = 30,
                "30 held deletion(s)",
            ),
            (
                "deliveries failing for over 10 min",
                |g| {
                    g.snapshot.queue.oldest_enqueued_at_ms = Some(1_000_000 - 11 * 60_000);
                    g.snapshot.queue.last_error = Some(LastError {
                        message: "http 401: unauthorized".into(),
                        at_ms: 999_000,
                    });
                },
                "3 record(s) waiting for 11 min while deliveries fail: http 401: unauthorized",
            ),
            (
                "a recent error after a delivery is no problem yet",
                |g| {
                    g.snapshot.queue.last_error = Some(LastError {
                        message: "http 503".into(),
                        at_ms: 999_000,
                    });
                },
                "",
            ),
        ];
        for (what, change, expected) in cases {
            let mut g = healthy();
            change(&mut g);
            assert_eq!(problems(&g, now).join("; "), expected, "{what}");
        }
    }
}
