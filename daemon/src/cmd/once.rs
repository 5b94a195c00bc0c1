//! `once`: one pass over the source, then delivery.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::clock::now_ms;
use crate::config::Config;
use crate::daemon::deliver::Step;
use crate::export::{self, EndReason, Outcome};
use crate::queue::Commit;
use crate::source::opencode::activity::Activity;
use crate::source::opencode::{OpenCodeDb, SourceError};
use logging::ProgressGuard;

use crate::cmd::summary_line;
use crate::daemon::*;

/// `once`: reads every session, builds its record, enqueues, delivers. Exit 0 when the outbox
/// is drained; 1 when something could not be delivered (the records stay queued, or are in
/// the dead-letter tree).
///
/// Sessions whose turn is still running are not exported (the daemon exports them when they
/// end), unless they have had no write for `export.stale_after_secs` (then `incomplete`).
///
/// # Errors
/// Source, outbox and sink set-up failures.
pub async fn once(config: &Config, timeout_secs: u64) -> anyhow::Result<ExitCode> {
    let outbox = Arc::new(open_outbox(config)?);
    let device = device_id(config)?;
    let mut ctx = export_context(config, &device);
    ctx.exported_at = now_ms();
    let db_path = config.source.db_path.clone();
    let busy = Duration::from_millis(config.source.busy_timeout_ms);
    let skip_children = config.export.skip_subagent_sessions;
    let stale_after_ms = (config.export.stale_after_secs as i64).saturating_mul(1000);
    let now = ctx.exported_at;
    let reading = ProgressGuard::new(0, "reading sessions");
    let bar = reading.bar().clone();
    let (records, notes) = tokio::task::spawn_blocking(move || -> Result<_, SourceError> {
        let db = OpenCodeDb::open(&db_path, busy)?;
        let mut heads = db.session_heads()?;
        heads.sort_by(|a, b| b.id.cmp(&a.id)); // Session ids sort newest first; print oldest first.
        bar.set_length(heads.len() as u64);
        let mut records = Vec::new();
        let mut notes = Vec::new();
        for head in heads {
            bar.inc(1);
            if skip_children && head.parent_id.is_some() {
                continue;
            }
            let Some(snapshot) = db.read_session(&head.id)? else {
                continue;
            };
            let outcome = match export::snapshot_activity(&snapshot) {
                Activity::Ended(e) => Outcome::ended(e.error),
                Activity::Empty => {
                    notes.push(format!("{}  (no messages; not exported)", head.id));
                    continue;
                }
                Activity::Busy if now - snapshot.last_write_ms() >= stale_after_ms => Outcome {
                    end_reason: export::EndReason::Idle,
                    error: None,
                    incomplete: true,
                },
                Activity::Busy => {
                    notes.push(format!("{}  (turn in progress; not exported)", head.id));
                    continue;
                }
            };
            records.push(export::build(&snapshot, &outcome, &ctx));
        }
        Ok((records, notes))
    })
    .await
    .context("the database reader panicked")?
    .with_context(|| format!("reading {}", config.source.db_path.display()))?;
    drop(reading);

    let last = last_export_puts(
        records.iter().map(|r| {
            let trigger = match (r.end_reason, r.incomplete) {
                (_, true) => "stale",
                (EndReason::Error, _) => "session.error",
                (EndReason::Deleted, _) => "session.deleted",
                (EndReason::Idle, _) => "session.idle",
            };
            (trigger, r.session_id.as_str())
        }),
        now,
    );
    outbox
        .commit(Commit {
            records: records
                .iter()
                .map(|r| new_record(r, serde_json::to_vec(r).expect("a record serializes")))
                .collect(),
            state_puts: state_puts_of(&last),
            state_removes: Vec::new(),
        })
        .await
        .context("writing the outbox")?;
    for r in &records {
        println!("{}", summary_line(r));
    }
    for n in &notes {
        println!("{n}");
    }

    let mut sender = sender_for(config, outbox.clone())?;
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    let mut dead_total = 0;
    let mut delivered_total = 0;
    let delivering = ProgressGuard::new(outbox.stats()?.pending_count, "delivering");
    loop {
        match sender.step().await? {
            Step::Idle => break,
            Step::Progress { delivered, dead } => {
                delivered_total += delivered;
                dead_total += dead;
                delivering.bar().inc((delivered + dead) as u64);
            }
            Step::Backoff { wait, reason } => {
                if Instant::now() + wait > deadline {
                    outbox.flush().await?;
                    let left = outbox.stats()?.pending_count;
                    bail!(
                        "cannot deliver to {}: {reason}; {left} record(s) stay queued and will be sent by the next `once` or by `run`",
                        sender.describe()
                    );
                }
                tracing::warn!(reason = %reason, retry_in_ms = wait.as_millis() as u64, "delivery failed; will retry");
                tokio::time::sleep(wait).await;
            }
            Step::Unauthorized { reason, .. } => {
                outbox.flush().await?;
                bail!(
                    "{} refused the ingest token ({reason}); records stay queued. Check convex.ingest_token / OPENCODE_TELEMETRY_INGEST_TOKEN against the deployment's INGEST_TOKEN",
                    sender.describe()
                );
            }
        }
    }
    drop(delivering);
    outbox.flush().await?;
    eprintln!(
        "exported {} session(s); delivered {delivered_total} to {}",
        records.len(),
        sender.describe()
    );
    if dead_total > 0 {
        eprintln!(
            "opencode-telemetry: {dead_total} record(s) were rejected and kept in the dead-letter tree; see `opencode-telemetry queue list`"
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
