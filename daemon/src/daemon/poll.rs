//! The poll side of the daemon: one tick reads what changed and commits the exports.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::clock::now_ms;
use crate::config::Config;
use crate::export::ExportContext;
use crate::queue::{Commit, Outbox};
use crate::source::opencode::{OpenCodeDb, SourceError};
use crate::track::{Emitted, Tracker};
use logging::ProgressGuard;

use super::*;

/// The poll side of the daemon.
pub(crate) struct Poller {
    pub(crate) config: Config,
    pub(crate) device: String,
    pub(crate) ctx: ExportContext,
    pub(crate) tracker: Option<Tracker>,
    pub(crate) db: Option<OpenCodeDb>,
    pub(crate) last_data_version: Option<i64>,
    pub(crate) missing_logged: bool,
    pub(crate) full_logged: bool,
    pub(crate) transitions_log: Option<PathBuf>,
    /// Show a progress bar over the next tick (the first one).
    pub(crate) progress_pending: bool,
    /// A tick has read the database to the end once (the first pass over the history is done).
    pub(crate) scanned_once: bool,
}

impl Poller {
    /// Takes the live settings of a reloaded config: export rules and record contents.
    pub(crate) fn reconfigure(&mut self, config: &Config) {
        self.config = config.clone();
        self.ctx = export_context(config, &self.device);
        if let Some(t) = self.tracker.as_mut() {
            t.set_rules(rules(config));
        }
    }

    /// One tick. Returns whether records were enqueued.
    pub(crate) async fn tick(&mut self, outbox: &Outbox) -> anyhow::Result<bool> {
        if outbox.is_full() {
            if !self.full_logged {
                tracing::warn!(
                    max_bytes = self.config.queue.max_bytes,
                    "the outbox is full; pausing reads of the opencode database until it drains"
                );
                self.full_logged = true;
            }
            return Ok(false);
        }
        self.full_logged = false;
        let db_path = self.config.source.db_path.clone();
        let busy = Duration::from_millis(self.config.source.busy_timeout_ms);
        let mut db = self.db.take();
        let mut tracker = self.tracker.take().expect("tracker present between ticks");
        let mut ctx = self.ctx.clone();
        let last_dv = self.last_data_version;
        let budget = outbox.free_bytes();
        let progress = std::mem::take(&mut self.progress_pending)
            .then(|| ProgressGuard::new(0, "reading sessions"));
        let had_progress = progress.is_some();
        if let Some(p) = &progress {
            tracker.set_progress(p.bar().clone());
        }
        let missing_logged = self.missing_logged;
        let now = now_ms();
        ctx.exported_at = now;
        let joined = tokio::task::spawn_blocking(move || {
            let result = (|| -> Result<(Option<crate::track::TickOutput>, Option<i64>), SourceError> {
                if db.as_ref().is_some_and(|d| d.replaced()) {
                    tracing::info!(db = %db_path.display(), "the opencode database file was replaced; reopening");
                    db = None;
                }
                let reopened = db.is_none();
                if reopened {
                    db = Some(OpenCodeDb::open(&db_path, busy)?);
                    tracker.rescan();
                    tracing::info!(db = %db_path.display(), "opened the opencode database (read-only)");
                }
                let d = db.as_ref().expect("opened above");
                let dv = d.data_version()?;
                // `data_version` is per connection: after a (re)open its value says nothing.
                let changed = reopened || last_dv != Some(dv);
                if !changed && !tracker.has_timers() {
                    return Ok((None, Some(dv)));
                }
                let out = tracker.tick(d, &ctx, now, changed, budget)?;
                Ok((Some(out), Some(dv)))
            })();
            (db, tracker, result)
        })
        .await;
        drop(progress);
        let (db, tracker, result) = joined.context("the database reader panicked")?;
        self.tracker = Some(tracker);
        match result {
            Ok((out, dv)) => {
                self.db = db;
                self.scanned_once = true;
                self.missing_logged = false;
                let out = match out {
                    Some(out) => out,
                    None => return Ok(false),
                };
                if out.is_empty() {
                    self.last_data_version = dv;
                    return Ok(false);
                }
                let emitted = !out.emitted.is_empty();
                if out.deferred > 0 {
                    tracing::debug!(
                        deferred = out.deferred,
                        "the outbox is nearly full; exports deferred"
                    );
                }
                let last = last_export_puts(
                    out.emitted
                        .iter()
                        .map(|e| (trigger_name(e.event), e.record.session_id.as_str())),
                    now,
                );
                let mut state_puts = out.state_puts;
                state_puts.extend(state_puts_of(&last));
                let commit = Commit {
                    records: out
                        .emitted
                        .iter()
                        .map(|e| new_record(&e.record, e.json.clone()))
                        .collect(),
                    state_puts,
                    state_removes: out.state_removes,
                };
                outbox.commit(commit).await.context("writing the outbox")?;
                if !last.is_empty() {
                    outbox.update_daemon_info(|d| d.last_exports.extend(last));
                }
                self.last_data_version = dv;
                for e in &out.emitted {
                    self.log_transition(e);
                }
                Ok(emitted)
            }
            // Not there yet, or OpenCode is still creating its tables: wait quietly.
            Err(e @ (SourceError::Missing { .. } | SourceError::NotOpenCode { .. })) => {
                if !missing_logged {
                    tracing::info!(reason = %e, "waiting for the opencode database to appear");
                }
                // The first pass is still to come.
                self.progress_pending |= had_progress;
                self.missing_logged = true;
                self.db = None;
                self.last_data_version = None;
                Ok(false)
            }
            Err(e) => {
                // The tracker only changed in memory for sessions it fully processed, and those
                // changes were not committed: start from a clean read next tick.
                tracing::warn!(error = %e, "reading the opencode database failed; retrying next tick");
                self.db = None;
                self.last_data_version = None;
                self.tracker = Some(Tracker::resume(
                    rules(&self.config),
                    outbox.state_scan(crate::track::STATE_PREFIX)?,
                ));
                Ok(false)
            }
        }
    }

    fn log_transition(&self, e: &Emitted) {
        let line = serde_json::json!({
            "ts": e.record.exported_at,
            "sessionId": e.record.session_id,
            "event": e.event,
            "endReason": e.record.end_reason,
            "error": e.record.error.as_ref().map(|x| &x.name),
            "updatedAt": e.record.updated_at,
            "archivedAt": e.record.archived_at,
            "deletedAt": e.record.deleted_at,
            "incomplete": e.record.incomplete,
        });
        tracing::info!(
            session_id = %e.record.session_id,
            event = %serde_json::to_string(&e.event).unwrap_or_default().trim_matches('"'),
            end_reason = e.record.end_reason.as_str(),
            "session exported"
        );
        if let Some(path) = &self.transitions_log {
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| writeln!(f, "{line}"));
            if let Err(err) = written {
                tracing::warn!(path = %path.display(), error = %err, "cannot write the transitions log");
            }
        }
    }
}
