//! `preview [SESSION…]`: the records that would be sent, printed, nothing sent.
//!
//! The pass is the one `once` runs ([`crate::daemon::pass`] in [`Mode::Flush`]), with a fresh
//! tracker instead of the persisted one: every session whose turn has ended (or the sessions
//! named) is built exactly as `once` builds it — `[privacy]`, redaction, the content rules,
//! fitting and the content hash included — and its JSON is printed on stdout, one record per
//! line, byte for byte what would be queued. Then everything is dropped: no outbox is opened,
//! no tracker state, status file or sink file is written, nothing is sent. The only file it may
//! create is the install's path key (`<data_dir>/path.key`, when there is none yet), so that the
//! hashed paths it shows are the ones later sent.
//!
//! Because the tracker is fresh, a session already exported is shown too (what its record is),
//! deletions are not (the source no longer has the session), and `revision` is the record's
//! build-time value (the real one continues the session's counter). `exportedAt` is the time of
//! the preview.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;

use crate::clock::now_ms;
use crate::config::Config;
use crate::daemon::pass::{self, PassOptions};
use crate::daemon::{device_id, export_context, path_key};
use crate::source::opencode::OpenCodeSource;
use crate::track::{Mode, Rules, Tracker};

/// `preview`: prints the records of `sessions` (all ended sessions when empty); see the module
/// docs. Exit 0, or 1 when a named session was not found or has no ended turn (a note on
/// stderr says which).
///
/// # Errors
/// Source failures; the data dir cannot hold the path key.
pub async fn preview(config: &Config, sessions: &[String]) -> anyhow::Result<ExitCode> {
    let device = device_id(config)?;
    let ctx = export_context(config, &device, path_key(config)?);
    let db = config.source.db_path.clone();
    let mut source = OpenCodeSource::from(&config.source);
    let rules = Rules::from(&config.export);
    let wanted: std::collections::BTreeSet<String> = sessions.iter().cloned().collect();
    let wanted_in = wanted.clone();
    let (found, json) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let wanted = wanted_in;
        let mut tracker = Tracker::new(rules);
        // No committed state: every session is new to this tracker, and nothing is kept.
        let empty = std::collections::BTreeMap::<Vec<u8>, Vec<u8>>::new();
        let mut found = std::collections::BTreeSet::new();
        let mut lines: Vec<(String, Vec<u8>)> = Vec::new();
        loop {
            let out = pass::pass(
                &mut source,
                &mut tracker,
                &ctx,
                now_ms,
                PassOptions {
                    chunk_sessions: pass::CHUNK_SESSIONS,
                    mode: Mode::Flush,
                    budget_bytes: u64::MAX,
                    store: &empty,
                    progress: None,
                    held_deletions: false,
                },
            )
            .with_context(|| format!("reading {}", db.display()))?;
            for e in out.exported {
                let id = e.record.session_id.clone();
                if wanted.is_empty() || wanted.contains(&id) {
                    found.insert(id.clone());
                    lines.push((id, e.json));
                }
            }
            if !out.more {
                break;
            }
        }
        // Oldest first, as `once` prints them (ids sort newest first).
        lines.sort_by(|a, b| b.0.cmp(&a.0));
        Ok((found, lines))
    })
    .await
    .context("the source reader panicked")??;
    let mut stdout = std::io::stdout().lock();
    for (_, bytes) in &json {
        stdout.write_all(bytes)?;
        stdout.write_all(b"\n")?;
    }
    stdout.flush()?;
    let missing: Vec<&String> = wanted.iter().filter(|id| !found.contains(*id)).collect();
    for id in &missing {
        eprintln!(
            "opencode-telemetry: {}: no such session with an ended turn (not found, still in a turn, or a subagent session summarised in its parent)",
            crate::cmd::escape(id)
        );
    }
    Ok(if missing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
