//! The poll side of the daemon: each tick runs one [`super::pass`] over the source on a
//! blocking thread and commits its records and tracker state to the outbox in one transaction.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use crate::clock::now_ms;
use crate::config::Config;
use crate::export::ExportContext;
use crate::queue::{Commit, Outbox};
use crate::source::{SessionSource, SourceError};
use crate::track::{Mode, Rules, Tracker};

use super::logging::ProgressGuard;
use super::pass::{self, Exported, PassOptions, PassOutput};
use super::status_file::StatusHandle;
use super::{export_context, last_export_puts, new_record, state_puts_of};

/// While reads of the source keep failing, how often the failure is logged again (ms).
pub(crate) const FAILING_SUMMARY_MS: i64 = 5 * 60 * 1000;

/// The poll side of the daemon.
pub(crate) struct Poller {
    pub(crate) config: Config,
    pub(crate) device: String,
    pub(crate) ctx: ExportContext,
    pub(crate) tracker: Option<Tracker>,
    pub(crate) source: Option<Box<dyn SessionSource>>,
    pub(crate) missing_logged: bool,
    /// The source problem last warned about and shown in `status` (see
    /// [`SourceError::Unsupported`]).
    pub(crate) source_problem: Option<String>,
    /// Deletions held in the outbox (see [`crate::track::rules::hold_deletions`]).
    pub(crate) held_deletions: usize,
    /// Reads of the source failing in a row: when the first failed (ms), how many, when the
    /// last summary was logged (ms).
    pub(crate) failing: Option<(i64, u64, i64)>,
    pub(crate) full_logged: bool,
    pub(crate) transitions_log: Option<PathBuf>,
    /// Show a progress bar over the next tick (the first one).
    pub(crate) progress_pending: bool,
    /// The progress bar of the first pass, kept across its chunks.
    pub(crate) progress: Option<ProgressGuard>,
    /// The last pass left work for the next one (see [`super::pass`], "Chunks"): tick again at
    /// once instead of waiting for the poll interval.
    pub(crate) more: bool,
    /// A tick has read the source to the end once (the first pass over the history is done).
    pub(crate) scanned_once: bool,
    /// The daemon's part of the status file (the last export per trigger).
    pub(crate) status: StatusHandle,
}

impl Poller {
    /// Takes the live settings of a reloaded config: export rules and record contents.
    pub(crate) fn reconfigure(&mut self, config: &Config) {
        self.config = config.clone();
        self.ctx = export_context(config, &self.device, self.ctx.privacy.path_key.clone());
        if let Some(t) = self.tracker.as_mut() {
            t.set_rules(Rules::from(&config.export));
        }
    }

    /// One tick. Returns whether records were enqueued.
    pub(crate) async fn tick(&mut self, outbox: &std::sync::Arc<Outbox>) -> anyhow::Result<bool> {
        self.more = false;
        if outbox.is_full() {
            if !self.full_logged {
                tracing::warn!(
                    max_bytes = self.config.queue.max_bytes,
                    "the outbox is full; pausing reads of the source until it drains"
                );
                self.full_logged = true;
            }
            return Ok(false);
        }
        self.full_logged = false;
        let mut source = self.source.take().expect("source present between ticks");
        let mut tracker = self.tracker.take().expect("tracker present between ticks");
        let ctx = self.ctx.clone();
        let budget = outbox.free_bytes();
        if std::mem::take(&mut self.progress_pending) {
            self.progress = Some(ProgressGuard::new(0, "reading sessions"));
        }
        let had_progress = self.progress.is_some();
        let bar = self.progress.as_ref().map(|p| p.bar().clone());
        let store = outbox.clone();
        let held_deletions = self.held_deletions > 0;
        let joined = tokio::task::spawn_blocking(move || {
            let result = pass::pass(
                source.as_mut(),
                &mut tracker,
                &ctx,
                now_ms,
                PassOptions {
                    chunk_sessions: pass::CHUNK_SESSIONS,
                    mode: Mode::Live,
                    budget_bytes: budget,
                    store: store.as_ref(),
                    progress: bar.as_ref(),
                    held_deletions,
                },
            );
            (source, tracker, result)
        })
        .await;
        let (mut source, tracker, result) = joined.context("the source reader panicked")?;
        self.tracker = Some(tracker);
        if result.is_err() {
            // The bar starts again with the pass that succeeds.
            self.progress = None;
        }
        let result = match result {
            Ok(out) => Ok(out),
            Err(pass::PassError::Source(e)) => Err(e),
            // The outbox cannot be read: fatal, like its write errors.
            Err(e @ pass::PassError::State(_)) => return Err(e.into()),
        };
        let out = match result {
            Ok(out) => out,
            // Not there yet, or the agent is still creating it: wait quietly.
            Err(e) if e.is_missing() => {
                if !self.missing_logged {
                    tracing::info!(reason = %e, "waiting for the {} to appear", source.kind());
                }
                // The first pass is still to come.
                self.progress_pending |= had_progress;
                self.missing_logged = true;
                source.rescan();
                self.source = Some(source);
                return Ok(false);
            }
            Err(e @ SourceError::Unsupported { .. }) => {
                // Nothing is read, so nothing in memory changed; the sender keeps delivering
                // what is queued. Said once per distinct problem, and shown by `status`.
                let problem = e.to_string();
                if self.source_problem.as_deref() != Some(problem.as_str()) {
                    tracing::warn!(error = %problem, "cannot read the {}; delivering what is queued and checking again every tick", source.kind());
                    self.status
                        .update(|d| d.source_problem = Some(problem.clone()));
                    self.source_problem = Some(problem);
                }
                self.progress_pending |= had_progress;
                source.rescan();
                self.source = Some(source);
                return Ok(false);
            }
            Err(e) => {
                // The tracker changed in memory and nothing was committed: start from the
                // persisted state and a full read next tick. A lasting failure is logged once,
                // then summarised every FAILING_SUMMARY_MS, and shown by `status`.
                let now = now_ms();
                match &mut self.failing {
                    None => {
                        tracing::warn!(error = %e, "reading the source failed; retrying every tick");
                        self.failing = Some((now, 1, now));
                        let problem = format!("reading failed: {e}");
                        self.status.update(|d| d.source_problem = Some(problem));
                    }
                    Some((since, count, summary)) => {
                        *count += 1;
                        tracing::debug!(error = %e, "reading the source failed again");
                        if now - *summary >= FAILING_SUMMARY_MS {
                            *summary = now;
                            tracing::warn!(error = %e, failures = *count, for_secs = (now - *since) / 1000,
                                "reading the source still fails; retrying every tick");
                        }
                    }
                }
                source.rescan();
                self.source = Some(source);
                self.tracker = Some(Tracker::resume(
                    Rules::from(&self.config.export),
                    outbox.as_ref(),
                )?);
                return Ok(false);
            }
        };
        self.source = Some(source);
        self.more = out.more;
        if !out.more {
            // The first pass over the history is done (all its chunks).
            if !self.scanned_once {
                tracing::info!("the first pass is done: every session was read");
                crate::cli::release_free_memory();
            }
            self.scanned_once = true;
            self.progress = None;
        }
        self.missing_logged = false;
        if let Some((since, count, _)) = self.failing.take() {
            tracing::info!(
                failures = count,
                for_secs = (now_ms() - since) / 1000,
                "reading the source works again"
            );
            if self.source_problem.is_none() {
                self.status.update(|d| d.source_problem = None);
            }
        }
        if self.source_problem.take().is_some() {
            tracing::info!("the source is readable again");
            self.status.update(|d| d.source_problem = None);
        }
        if out.is_empty() {
            return Ok(false);
        }
        self.commit(outbox, out).await
    }

    async fn commit(&mut self, outbox: &Outbox, out: PassOutput) -> anyhow::Result<bool> {
        let emitted = !out.exported.is_empty();
        let (held, released) = (out.held, out.released);
        if out.deferred > 0 {
            tracing::debug!(
                deferred = out.deferred,
                "the outbox is nearly full; exports deferred"
            );
        }
        let last = last_export_puts(
            out.exported
                .iter()
                .map(|e| (e.trigger.name(), e.record.session_id.as_str())),
            out.now_ms,
        );
        let mut state_puts = out.state_puts;
        state_puts.extend(state_puts_of(&last));
        let commit = Commit {
            records: out
                .exported
                .iter()
                .map(|e| new_record(&e.record, e.json.clone()))
                .collect(),
            state_puts,
            state_removes: out.state_removes,
        };
        outbox.commit(commit).await.context("writing the outbox")?;
        if held + released > 0 {
            if held > 0 {
                tracing::warn!("{}", super::held_message(held));
            }
            if released > 0 {
                tracing::info!(released, "sessions with held deletions are back in the source; their deletions are dropped");
            }
            self.held_deletions = (self.held_deletions + held).saturating_sub(released);
            let n = self.held_deletions;
            self.status.update(|d| d.held_deletions = n);
        }
        if !last.is_empty() {
            self.status.update(|d| d.last_exports.extend(last));
        }
        for e in &out.exported {
            self.log_transition(e);
        }
        Ok(emitted)
    }

    fn log_transition(&self, e: &Exported) {
        let line = serde_json::json!({
            "ts": e.record.exported_at,
            "sessionId": e.record.session_id,
            "event": e.trigger,
            "endReason": e.record.end_reason,
            "error": e.record.error.as_ref().map(|x| &x.name),
            "updatedAt": e.record.updated_at,
            "archivedAt": e.record.archived_at,
            "deletedAt": e.record.deleted_at,
            "incomplete": e.record.incomplete,
        });
        tracing::info!(
            session_id = %e.record.session_id,
            event = e.trigger.name(),
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
