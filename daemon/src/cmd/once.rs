//! `once`: one pass over the source with the daemon's tracker and rules, then delivery.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::clock::now_ms;
use crate::config::Config;
use crate::daemon::deliver::Step;
use crate::daemon::logging::ProgressGuard;
use crate::daemon::pass::{self, PassOptions, Waiting};
use crate::queue::Commit;
use crate::source::opencode::OpenCodeSource;
use crate::track::{Mode, Rules, Tracker};

use crate::cmd::{escape, summary_line};
use crate::daemon::*;

/// `once`: one pass over the source, then delivery. Exit 0 when the outbox is drained; 1 when
/// something could not be delivered (the records stay queued, or are in the dead-letter tree).
///
/// The pass is the daemon's ([`crate::daemon::pass`]) in [`Mode::Flush`]: the same tracker,
/// resumed from the same persisted state, with the debounce and todo timers counted as
/// elapsed — so every session whose turn has ended and that was not exported in that state
/// yet is exported now, a turn still running is not (unless stale for
/// `export.stale_after_secs`: then `incomplete`), and the tracker's state is committed with
/// the records. `once` then `run`, or `once` twice, export nothing unchanged again.
///
/// # Errors
/// Source, outbox and sink set-up failures.
pub async fn once(config: &Config, timeout_secs: u64) -> anyhow::Result<ExitCode> {
    let outbox = Arc::new(open_outbox(config)?);
    if let crate::daemon::Fill::Paused { .. } = crate::daemon::fill_store(&outbox).await? {
        println!(
            "the outbox is full: the local store gets the rest of the sessions exported before it existed at the next `once` or from `run`"
        );
    }
    let device = device_id(config)?;
    let mut ctx = export_context(config, &device, path_key(config)?);
    let rules = Rules::from(&config.export);
    let mut tracker = if outbox.was_rebuilt() {
        Tracker::new(rules)
    } else {
        Tracker::resume(rules, outbox.as_ref())?
    };
    let mut source = OpenCodeSource::from(&config.source);
    let reading = ProgressGuard::new(0, "reading sessions");
    let bar = reading.bar().clone();
    let held_before = crate::daemon::held_deletions(&outbox)?;
    // The pass runs a chunk at a time (see `daemon::pass`, "Chunks"), each chunk committed
    // with its tracker state before the next is read; each chunk's records are printed once
    // committed.
    let (mut exported, mut held, mut released, mut deferred) = (0, 0, 0, 0);
    let mut waiting = Vec::new();
    loop {
        let budget = outbox.free_bytes();
        let store = outbox.clone();
        let progress = bar.clone();
        let (back, out) = tokio::task::spawn_blocking(move || {
            let out = pass::pass(
                &mut source,
                &mut tracker,
                &ctx,
                now_ms,
                PassOptions {
                    chunk_sessions: pass::CHUNK_SESSIONS,
                    mode: Mode::Flush,
                    budget_bytes: budget,
                    store: store.as_ref(),
                    progress: Some(&progress),
                    held_deletions: held_before > 0,
                },
            );
            ((source, tracker, ctx), out)
        })
        .await
        .context("the source reader panicked")?;
        (source, tracker, ctx) = back;
        let out = out.with_context(|| format!("reading {}", config.source.db_path.display()))?;

        let last = last_export_puts(
            out.exported
                .iter()
                .map(|e| (e.trigger.name(), e.record.session_id.as_str())),
            out.now_ms,
        );
        let mut state_puts = out.state_puts;
        state_puts.extend(state_puts_of(&last));
        outbox
            .commit(Commit {
                records: out
                    .exported
                    .iter()
                    .map(|e| new_record(&e.record, e.json.clone()))
                    .collect(),
                state_puts,
                state_removes: out.state_removes,
            })
            .await
            .context("writing the outbox")?;
        // Session ids sort newest first; print oldest first (within the chunk).
        let mut records: Vec<_> = out.exported.iter().map(|e| &e.record).collect();
        records.sort_by(|a, b| b.session_id.cmp(&a.session_id));
        bar.suspend(|| {
            for r in &records {
                println!("{}", summary_line(r));
            }
        });
        exported += out.exported.len();
        held += out.held;
        released += out.released;
        deferred += out.deferred;
        waiting.extend(out.waiting);
        if !out.more {
            break;
        }
    }
    drop(reading);

    waiting.sort_by(|a, b| b.0.cmp(&a.0));
    for (id, why) in &waiting {
        match why {
            Waiting::NoMessages => {
                println!("{}  (no messages; not exported)", escape(&id.to_string()))
            }
            Waiting::TurnInProgress => {
                println!(
                    "{}  (turn in progress; not exported)",
                    escape(&id.to_string())
                )
            }
            Waiting::ReplyPending => {
                println!(
                    "{}  (prompt just sent, no reply yet; not exported)",
                    escape(&id.to_string())
                )
            }
        }
    }
    let held_now = held_before + held - released;
    if held > 0 {
        tracing::warn!("{}", crate::daemon::held_message(held));
    }
    if held_now > 0 {
        println!(
            "{held_now} deletion(s) held: {}",
            crate::daemon::HELD_ADVICE
        );
    }
    if deferred > 0 {
        println!(
            "{deferred} session(s) left for the next `once` or `run`: the outbox is full (queue.max_bytes)"
        );
    }

    // The lanes drain at the same time, each on its own: a sink that cannot be reached before
    // the deadline leaves its records queued for the next `once` or `run`, and never keeps the
    // others from theirs (nor eats their time).
    let senders = senders_for(config, outbox.clone())?;
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    let delivering = ProgressGuard::new(
        outbox.stats()?.lanes.iter().map(|l| l.pending_count).sum(),
        "delivering",
    );
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|sender| tokio::spawn(drain(sender, deadline, delivering.bar().clone())))
        .collect();
    let mut dead_total = 0;
    let mut failures: Vec<String> = Vec::new();
    let mut delivered_to: Vec<String> = Vec::new();
    for task in tasks {
        let drained = task.await.context("a delivery task failed")??;
        dead_total += drained.dead;
        match drained.failed {
            None => delivered_to.push(format!("{} to {}", drained.delivered, drained.sink)),
            Some(why) => {
                let left = outbox
                    .stats()?
                    .lanes
                    .iter()
                    .find(|l| l.lane == drained.lane)
                    .map_or(0, |l| l.pending_count);
                failures.push(format!(
                    "{why}; {left} record(s) stay queued for it and will be sent by the next `once` or by `run`"
                ));
            }
        }
    }
    drop(delivering);
    outbox.flush().await?;
    if !delivered_to.is_empty() {
        eprintln!(
            "exported {exported} session(s); delivered {}",
            delivered_to.join(", ")
        );
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    if dead_total > 0 {
        eprintln!(
            "opencode-telemetry: {dead_total} record(s) were rejected and kept in the dead-letter tree; see `opencode-telemetry queue list`"
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// What draining one lane did.
struct Drained {
    lane: crate::queue::Lane,
    sink: String,
    delivered: usize,
    dead: usize,
    /// Why the lane stopped before it was empty.
    failed: Option<String>,
}

/// Sends `sender`'s lane until it is empty, the sink refuses the credentials, or the next retry
/// would pass `deadline`.
async fn drain(
    mut sender: crate::daemon::deliver::Sender,
    deadline: Instant,
    bar: indicatif::ProgressBar,
) -> Result<Drained, crate::queue::QueueError> {
    let (mut delivered_total, mut dead_total) = (0, 0);
    let failed = loop {
        match sender.step().await? {
            Step::Idle => break None,
            Step::Progress { delivered, dead } => {
                delivered_total += delivered;
                dead_total += dead;
                bar.inc((delivered + dead) as u64);
            }
            Step::Backoff { wait, reason } => {
                if Instant::now() + wait > deadline {
                    break Some(format!("cannot deliver to {}: {reason}", sender.describe()));
                }
                tracing::warn!(lane = %sender.lane(), reason = %reason, retry_in_ms = wait.as_millis() as u64, "delivery failed; will retry");
                tokio::time::sleep(wait).await;
            }
            Step::Unauthorized { reason, .. } => {
                break Some(format!(
                    "{} refused the ingest token ({reason}); records stay queued. The ingest token (stored by `opencode-telemetry login`, or OPENCODE_TELEMETRY_INGEST_TOKEN, or convex.ingest_token) must be an unrevoked device token of the deployment (npx convex run devices:list; devices:create makes one, `opencode-telemetry login` stores it), or the legacy INGEST_TOKEN with ALLOW_LEGACY_INGEST_TOKEN=1",
                    sender.describe()
                ));
            }
        }
    };
    Ok(Drained {
        lane: sender.lane(),
        sink: sender.describe(),
        delivered: delivered_total,
        dead: dead_total,
        failed,
    })
}
