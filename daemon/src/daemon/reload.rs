//! SIGHUP: what a reloaded configuration changes in a running daemon.
//!
//! The daemon re-runs the start-up loading (file + environment + `--db`, the same validation).
//! A config that fails to load is rejected as a whole: an ERROR names the key and the file and
//! the running configuration stays. A valid one is compared key by key with the running one
//! ([`plan`]):
//! - **applied live**: `service.log_level`, `service.log_format`, `service.shutdown_grace_secs`,
//!   `source.poll_interval_ms`, every `[export]` key (debounce, final/stale timers, record
//!   contents), every `[convex]` and `[local]` key (the sink and its retry pacing are rebuilt;
//!   the outbox and its queued records are untouched, a request in flight finishes on the old
//!   sink);
//! - **need a restart** (a WARN names each, the running value stays): `data_dir`,
//!   `source.db_path`, `source.busy_timeout_ms`, every `[queue]` key.
//!
//! Each applied change is logged at INFO as `key: old → new`; the ingest token is only ever
//! reported as "convex.ingest_token changed".

use std::collections::BTreeMap;

use crate::config::Config;

/// Keys (or `[table]` prefixes ending in `.`) that only a restart can change.
const RESTART_ONLY: &[&str] = &[
    "data_dir",
    "source.db_path",
    "source.busy_timeout_ms",
    "queue.",
];

/// What a valid reloaded config changes.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The config to run with: the new one, with restart-only keys kept at their running value.
    pub effective: Config,
    /// Applied changes, one `key: old → new` (or `convex.ingest_token changed`) each.
    pub applied: Vec<String>,
    /// Changes ignored until a restart, one `key: running → new` each.
    pub need_restart: Vec<String>,
    /// The sink must be rebuilt (a `[convex]` / `[local]` key or the grace period changed).
    pub rebuild_sink: bool,
}

fn is_restart_only(key: &str) -> bool {
    RESTART_ONLY
        .iter()
        .any(|k| key == *k || (k.ends_with('.') && key.starts_with(k)))
}

/// Every leaf of the config as `dotted.key → TOML value` (the token shows as `[redacted]`).
fn flatten(config: &Config) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(v) = toml::Value::try_from(config) {
        walk("", &v, &mut out);
    }
    out
}

fn diff(old: &Config, new: &Config) -> Vec<(String, String, String)> {
    let a = flatten(old);
    let b = flatten(new);
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            let show = |m: &BTreeMap<String, String>| m.get(k).cloned().unwrap_or_default();
            (k.clone(), show(&a), show(&b))
        })
        .collect()
}

/// Compares the running config with a freshly loaded one.
pub fn plan(old: &Config, new: Config) -> Plan {
    let mut effective = new.clone();
    effective.data_dir = old.data_dir.clone();
    effective.source.db_path = old.source.db_path.clone();
    effective.source.busy_timeout_ms = old.source.busy_timeout_ms;
    effective.queue = old.queue.clone();
    let need_restart = diff(old, &new)
        .into_iter()
        .filter(|(k, _, _)| is_restart_only(k))
        .map(|(k, a, b)| format!("{k}: {a} → {b}"))
        .collect();
    let changes = diff(old, &effective);
    let mut applied: Vec<String> = changes
        .iter()
        .map(|(k, a, b)| format!("{k}: {a} → {b}"))
        .collect();
    let token_changed = old.convex.ingest_token != effective.convex.ingest_token;
    if token_changed {
        applied.push("convex.ingest_token changed".to_string());
    }
    let rebuild_sink = token_changed
        || changes.iter().any(|(k, _, _)| {
            k.starts_with("convex.")
                || k.starts_with("local.")
                || k == "service.shutdown_grace_secs"
        });
    Plan {
        effective,
        applied,
        need_restart,
        rebuild_sink,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LogFormat, Secret};

    fn base() -> Config {
        let mut c = Config {
            data_dir: "/var/a".into(),
            ..Config::default()
        };
        c.local.path = "/var/a/sessions.ndjson".into();
        c.source.db_path = "/oc/opencode.db".into();
        c
    }

    #[test]
    fn live_keys_are_applied_and_restart_keys_kept() {
        let old = base();
        let mut new = base();
        new.source.poll_interval_ms = 50;
        new.service.log_format = LogFormat::Json;
        new.data_dir = "/var/b".into();
        new.queue.max_bytes *= 2;
        let p = plan(&old, new);
        assert_eq!(p.effective.data_dir, old.data_dir);
        assert_eq!(p.effective.queue.max_bytes, old.queue.max_bytes);
        assert_eq!(p.effective.source.poll_interval_ms, 50);
        assert_eq!(
            p.applied,
            vec![
                "service.log_format: \"auto\" → \"json\"".to_string(),
                "source.poll_interval_ms: 1000 → 50".to_string(),
            ]
        );
        assert_eq!(p.need_restart.len(), 2, "{:?}", p.need_restart);
        assert!(p.need_restart[0].starts_with("data_dir: \"/var/a\" → \"/var/b\""));
        assert!(p.need_restart[1].starts_with("queue.max_bytes: "));
        assert!(!p.rebuild_sink);
    }

    #[test]
    fn a_new_token_rebuilds_the_sink_and_is_never_shown() {
        let mut old = base();
        old.convex.url = "https://a.convex.cloud".into();
        old.convex.ingest_token = Secret::new("old-token-abc123");
        let mut new = old.clone();
        new.convex.ingest_token = Secret::new("new-token-def456");
        let p = plan(&old, new);
        assert!(p.rebuild_sink);
        assert_eq!(p.applied, vec!["convex.ingest_token changed".to_string()]);
        let all = format!("{:?}", p.applied) + &format!("{:?}", p.effective);
        assert!(!all.contains("old-token-abc123") && !all.contains("new-token-def456"));
    }

    #[test]
    fn an_unchanged_config_changes_nothing() {
        let p = plan(&base(), base());
        assert!(p.applied.is_empty() && p.need_restart.is_empty() && !p.rebuild_sink);
    }
}
