//! The one-shot commands: `once`, `preview`, `login`, `check-config`, `status`, `queue`.
//!
//! Every human-readable line that shows a value from a source or a record (a title, a session
//! id, an error) goes through [`escape`], so a title holding terminal control sequences cannot
//! rewrite the user's terminal or forge lines.

pub mod login;
mod once;
mod preview;
pub mod report;
pub mod status;

pub use login::login;
pub use once::once;
pub use preview::preview;

use std::process::ExitCode;
use std::time::Duration;

use crate::clock::now_ms;
use crate::config::{Config, Loaded};
use crate::export::SessionExport;

use crate::daemon::*;

/// How long `check-config` waits for the deployment's `/whoami` answer.
pub const CHECK_WHOAMI_TIMEOUT: Duration = Duration::from_secs(5);

/// `check-config`: prints the effective configuration with secrets redacted, where the ingest
/// token comes from, and — unless `offline` — which device the deployment knows this machine
/// as: one `GET /whoami` with a [`CHECK_WHOAMI_TIMEOUT`], whose failure (unreachable,
/// rejected) is one `# device:` line and not an error: the daemon retries delivery by itself.
///
/// # Errors
/// None beyond what loading already reported; kept fallible for symmetry.
pub async fn check_config(loaded: &Loaded, offline: bool, probe: bool) -> anyhow::Result<ExitCode> {
    let c = &loaded.config;
    // With a deployment and not offline: whether it answered as expected.
    let mut probed = None;
    match &loaded.path {
        Some(p) => println!("# config file: {}", p.display()),
        None => println!("# config file: none (built-in defaults)"),
    }
    for warning in loaded.warnings() {
        eprintln!("opencode-telemetry: warning: {warning}");
        println!("# warning: {warning}");
    }
    println!("# sink: {}", sink_description(c));
    // The key does not matter for the description.
    let privacy = crate::export::Privacy::new(&c.privacy, crate::export::PathKey::new([0; 32]));
    println!("# leaves the machine: {}", privacy.describe());
    if c.uses_convex() {
        // Checked at load time; here only to show where batches go.
        if let Ok(url) = crate::sink::convex::url::check(&c.convex.url) {
            if let Ok(endpoint) = crate::sink::convex::url::ingest_endpoint(&url) {
                println!(
                    "# posts to: POST {}",
                    crate::sink::convex::url::display(&endpoint)
                );
            }
        }
        println!("# ingest token: {}", token_source(loaded));
        if !offline {
            let (line, answers) = device_line(c).await;
            println!("# device: {line}");
            probed = Some(answers);
        }
    } else if probe {
        println!(
            "# probe: nothing to ask (no deployment configured; records go to the local store)"
        );
    }
    println!(
        "# opencode database: {} ({})",
        c.source.db_path.display(),
        if c.source.db_path.exists() {
            "exists"
        } else {
            "not found yet"
        }
    );
    print!("{}", c.to_redacted_toml());
    println!("# config ok");
    match (probe, probed) {
        (true, Some(false)) => {
            eprintln!(
                "opencode-telemetry: the deployment did not answer as expected (see the `# device:` line)"
            );
            Ok(ExitCode::FAILURE)
        }
        (true, Some(true)) => {
            println!("# probe: ok");
            Ok(ExitCode::SUCCESS)
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// Where `convex.ingest_token` came from (never its value).
fn token_source(loaded: &Loaded) -> String {
    use crate::config::ENV_INGEST_TOKEN;
    if loaded.config.convex.ingest_token.is_empty() {
        "none (run `opencode-telemetry login`)".into()
    } else if std::env::var(ENV_INGEST_TOKEN).is_ok_and(|v| !v.is_empty()) {
        format!("from the environment (${ENV_INGEST_TOKEN})")
    } else if let Some(p) = &loaded.credentials_file {
        format!("from the credentials file {}", p.display())
    } else {
        "from the config file (convex.ingest_token)".into()
    }
}

/// The `# device:` line of `check-config`: what `/whoami` says about the token, and whether
/// that is the expected answer (a device token bound to this machine or not bound yet, or the
/// legacy token the deployment accepts).
async fn device_line(c: &Config) -> (String, bool) {
    use crate::sink::convex::whoami::{whoami, WhoAmI};
    let answer = whoami(&c.convex, CHECK_WHOAMI_TIMEOUT).await;
    match &answer {
        WhoAmI::Device { device_id, .. } => {
            let mine = crate::daemon::device_id(c).ok();
            match (device_id, mine) {
                (Some(bound), Some(mine)) if *bound != mine => (
                    format!(
                        "{} — but this machine's device id is {mine}: its records will be rejected; \
                         use this machine's own token (`opencode-telemetry login`)",
                        answer.describe()
                    ),
                    false,
                ),
                _ => (format!("this machine is {}", answer.describe()), true),
            }
        }
        WhoAmI::Legacy => (format!("none — {}", answer.describe()), true),
        _ => (format!("unknown: {}", answer.describe()), false),
    }
}

/// `text` with every control character (C0, DEL, C1) and every bidirectional-override
/// character (U+202A–U+202E, U+2066–U+2069) written as a Rust-style escape (`\n`, `\u{1b}`),
/// for human-readable output. Borrows when there is nothing to escape.
pub fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    let bad =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(bad) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if bad(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// One line per exported session, as `once` prints it: id, end reason, messages, todos done /
/// total, cost, and the title when the record has one (`[privacy] titles`), escaped.
pub fn summary_line(r: &SessionExport) -> String {
    format!(
        "{}  {:<7}  msgs {:>3}  todos {}/{}  ${:.4}{}{}",
        escape(&r.session_id),
        r.end_reason.as_str(),
        r.message_count,
        r.todo_stats.completed,
        r.todo_stats.total,
        r.cost,
        if r.title.is_empty() { "" } else { "  " },
        escape(&r.title)
    )
}

/// `status` (or `status --json`, `status --check`); see [`mod@status`].
///
/// # Errors
/// Outbox failures other than the lock.
pub fn status(config: &Config, as_json: bool, check: bool) -> anyhow::Result<ExitCode> {
    status::status(config, as_json, check)
}

/// `queue list`: pending and dead-lettered records.
///
/// # Errors
/// The outbox cannot be opened (e.g. the daemon holds it).
pub async fn queue_list(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let outbox = open_outbox_keeping(config)?;
    let now = now_ms();
    if json {
        let mut lanes = Vec::new();
        for &lane in outbox.lanes() {
            let pending: Vec<serde_json::Value> = outbox
                .pending(lane, usize::MAX)?
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "sessionId": p.session_id(),
                        "enqueuedAt": p.enqueued_at_ms(),
                        "bytes": p.record_json().len(),
                        "attempts": p.attempts(),
                    })
                })
                .collect();
            lanes.push(serde_json::json!({ "sink": lane.as_str(), "pending": pending }));
        }
        let dead: Vec<serde_json::Value> = outbox
            .dead_entries()?
            .iter()
            .map(|d| {
                serde_json::json!({
                    "sessionId": d.session_id,
                    "sink": d.lane.map(|l| l.as_str()),
                    "deadAt": d.dead_at_ms,
                    "updatedAt": d.updated_at_ms,
                    "attempts": d.attempts,
                    "reason": d.reason,
                })
            })
            .collect();
        let out = serde_json::json!({
            "pendingCount": outbox.stats()?.pending_count,
            "sinks": lanes,
            "dead": dead,
        });
        println!("{out}");
        return Ok(ExitCode::SUCCESS);
    }
    // `pending:` counts the records held by at least one lane; each lane lists its own.
    println!("pending: {}", outbox.stats()?.pending_count);
    for &lane in outbox.lanes() {
        let pending = outbox.pending(lane, usize::MAX)?;
        println!("  {lane}: {}", pending.len());
        for p in &pending {
            println!(
                "    {}  queued {}s ago  {} bytes  attempts {}",
                escape(p.session_id()),
                (now - p.enqueued_at_ms()).max(0) / 1000,
                p.record_json().len(),
                p.attempts()
            );
        }
    }
    let dead = outbox.dead_entries()?;
    println!("dead letters: {}", dead.len());
    for d in &dead {
        println!(
            "  {}  {}  dead {}  updatedAt {}  reason: {}",
            escape(&d.session_id),
            d.lane.map_or("every sink", |l| l.as_str()),
            status::ago(now, d.dead_at_ms),
            d.updated_at_ms
                .map(|t| t.to_string())
                .unwrap_or_else(|| "?".into()),
            escape(&d.reason)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `queue retry-dead`: moves dead-lettered records back to pending.
///
/// # Errors
/// The outbox cannot be opened or written.
pub async fn queue_retry_dead(config: &Config) -> anyhow::Result<ExitCode> {
    let outbox = open_outbox_keeping(config)?;
    let n = outbox.retry_dead().await?;
    outbox.flush().await?;
    println!("requeued {n} record(s)");
    Ok(ExitCode::SUCCESS)
}

/// `queue confirm-deletions`: exports the held deletions (see
/// [`crate::track::rules::hold_deletions`]), each marked deleted now from the last record kept
/// for it, in chunks of 256 (each chunk one transaction: its records enqueued and its held
/// entries removed). The daemon delivers them when it runs. A held entry that does not decode
/// is removed with one warning.
///
/// # Errors
/// The outbox cannot be opened (a daemon runs: stop it first) or written.
pub async fn queue_confirm_deletions(config: &Config) -> anyhow::Result<ExitCode> {
    let outbox = open_outbox_keeping(config)?;
    let mut confirmed = 0;
    loop {
        let held = outbox.state_after(crate::track::HELD_PREFIX, None, 256)?;
        if held.is_empty() {
            break;
        }
        let now = crate::clock::now_ms();
        let mut records = Vec::with_capacity(held.len());
        let mut removes = Vec::with_capacity(held.len());
        for (key, json) in held {
            match serde_json::from_slice::<crate::export::SessionExport>(&json) {
                Ok(last) => {
                    let record = crate::export::mark_deleted(&last, now, config.privacy.on_delete);
                    let json = serde_json::to_vec(&record).expect("a record serializes");
                    records.push(crate::daemon::new_record(&record, json));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "dropping a held deletion whose record does not decode")
                }
            }
            removes.push(key);
        }
        confirmed += records.len();
        outbox
            .commit(crate::queue::Commit {
                records,
                state_puts: Vec::new(),
                state_removes: removes,
            })
            .await?;
    }
    println!("exported {confirmed} held deletion(s); the daemon delivers them when it runs");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn control_and_bidi_characters_are_escaped_and_the_rest_kept() {
        for (raw, shown) in [
            ("plain title — ünïcode ✓", "plain title — ünïcode ✓"),
            (
                "\u{1b}[2J\u{1b}]0;pwned\u{7}",
                "\\u{1b}[2J\\u{1b}]0;pwned\\u{7}",
            ),
            ("line\nforged: ok\r", "line\\nforged: ok\\r"),
            ("tab\there", "tab\\there"),
            ("del\u{7f} c1\u{9b}", "del\\u{7f} c1\\u{9b}"),
            ("evil\u{202e}txt.exe", "evil\\u{202e}txt.exe"),
            ("iso\u{2066}late", "iso\\u{2066}late"),
        ] {
            assert_eq!(escape(raw), shown, "{raw:?}");
        }
    }
}
