//! Where OpenCode keeps its database: the same resolution as OpenCode itself, so the daemon
//! finds the file OpenCode writes without configuration.

use std::path::PathBuf;

/// Resolves `opencode.db` the way OpenCode 1.18 does (`core/database/database.ts`):
/// `OPENCODE_DB` (absolute, or relative to OpenCode's data dir), else
/// `$XDG_DATA_HOME/opencode/opencode.db` (`~/.local/share/opencode/opencode.db` on every
/// platform, as OpenCode uses xdg-basedir), else — when that file does not exist and exactly one
/// channel database `opencode-<channel>.db` does (preview or source builds) — that one.
pub fn default_db_path() -> PathBuf {
    let data = opencode_data_dir();
    if let Some(db) = std::env::var_os("OPENCODE_DB").filter(|v| !v.is_empty()) {
        let db = PathBuf::from(db);
        return if db.is_absolute() { db } else { data.join(db) };
    }
    let main = data.join("opencode.db");
    if main.exists() {
        return main;
    }
    let channel_dbs: Vec<PathBuf> = std::fs::read_dir(&data)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("opencode-") && n.ends_with(".db"))
        })
        .collect();
    match channel_dbs.as_slice() {
        [only] => only.clone(),
        _ => main,
    }
}

/// OpenCode's data dir: `$XDG_DATA_HOME/opencode`, default `~/.local/share/opencode`.
fn opencode_data_dir() -> PathBuf {
    let xdg = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let base = xdg.unwrap_or_else(|| {
        directories::BaseDirs::new()
            .map(|b| b.home_dir().join(".local/share"))
            .unwrap_or_else(|| PathBuf::from(".local/share"))
    });
    base.join("opencode")
}
