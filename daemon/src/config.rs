//! Configuration: a TOML file read through the `config` crate, defaults for every key, and a
//! short allow-list of environment overrides for secrets.
//!
//! Where it comes from, in order (later wins):
//! 1. built-in defaults (each section's `Default`, e.g. [`SourceConfig::default`]);
//! 2. the TOML file: `--config PATH`, else `$OPENCODE_TELEMETRY_CONFIG`, else
//!    `<platform config dir>/opencode-telemetry/config.toml` (`~/.config/opencode-telemetry/config.toml`
//!    on Linux, `~/Library/Application Support/opencode-telemetry/config.toml` on macOS). The
//!    default file may be absent; an explicitly named one must exist;
//! 3. the **credentials file** `<platform config dir>/opencode-telemetry/env`
//!    ([`credentials_path`]: `$XDG_CONFIG_HOME/opencode-telemetry/env`, default
//!    `~/.config/opencode-telemetry/env`, on Linux — the file the systemd unit names in
//!    `EnvironmentFile=`; `~/Library/Application Support/opencode-telemetry/env` on macOS, where
//!    launchd has no such setting and the daemon reads it itself). `opencode-telemetry login`
//!    writes the device token there (mode 0600, see [`store_ingest_token`]). It holds `KEY=VALUE`
//!    lines as systemd reads them (blank lines and `#`/`;` comments skipped, one pair of
//!    surrounding quotes removed); of its variables only the four below are read, each as if it
//!    were set in the environment. The file may be absent; it is read whichever `--config` is
//!    used, so every command (`run`, `once`, `check-config`, …) finds the token the service uses;
//! 4. environment overrides, only these: `OPENCODE_TELEMETRY_CONVEX_URL` (`convex.url`),
//!    `OPENCODE_TELEMETRY_INGEST_TOKEN` (`convex.ingest_token`), `OPENCODE_TELEMETRY_DATA_DIR`
//!    (`data_dir`), `OPENCODE_TELEMETRY_LOG_FORMAT` (`service.log_format`). No general
//!    `OPENCODE_TELEMETRY_*` mapping exists, so an unrelated variable with that prefix can never
//!    break start-up. A variable set (non-empty) in the environment wins over the credentials
//!    file;
//! 5. `--db PATH` on the command line (`source.db_path`).
//!
//! Unknown keys and bad values are errors that name the key and the file; the binary exits with
//! status 78 (`EX_CONFIG`) on them, which the systemd unit lists in `RestartPreventExitStatus`.
//! Error messages never contain the ingest token, even when the TOML around it is malformed
//! (the parser quotes the offending line; the token's value is cut out of it).
//!
//! A file (the config file or the credentials file) that holds the ingest token and can be read
//! or written by group or others gets a warning, as ssh gives for private keys
//! ([`Loaded::permission_warning`]).
//! `config.example.toml` next to this crate documents every key and is parsed by a test.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Environment variable naming the config file (same as `--config`).
pub const ENV_CONFIG: &str = "OPENCODE_TELEMETRY_CONFIG";
/// Environment override of `convex.url`.
pub const ENV_CONVEX_URL: &str = "OPENCODE_TELEMETRY_CONVEX_URL";
/// Environment override of `convex.ingest_token`.
pub const ENV_INGEST_TOKEN: &str = "OPENCODE_TELEMETRY_INGEST_TOKEN";
/// Environment override of `data_dir`.
pub const ENV_DATA_DIR: &str = "OPENCODE_TELEMETRY_DATA_DIR";
/// Environment override of `service.log_format` (`auto`, `text` or `json`).
pub const ENV_LOG_FORMAT: &str = "OPENCODE_TELEMETRY_LOG_FORMAT";

/// File name of the credentials file inside the platform config dir (see [`credentials_path`]).
pub const CREDENTIALS_FILE_NAME: &str = "env";

/// The variables the credentials file and the environment may set.
const ENV_KEYS: [&str; 4] = [
    ENV_CONVEX_URL,
    ENV_INGEST_TOKEN,
    ENV_DATA_DIR,
    ENV_LOG_FORMAT,
];

/// The example config shipped with the crate (every key, commented, with its default).
pub const EXAMPLE_CONFIG: &str = include_str!("../config.example.toml");

/// A secret string (the ingest token). `Debug` and `Display` print `[redacted]`, so the config can
/// be logged or printed; only [`Secret::expose`] gives the value, at the one place that sends it.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    /// The secret itself. Call it only where the value is put on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// True for the empty string (no secret configured).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "[redacted]"
        })
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl Serialize for Secret {
    /// Serializes redacted: the config printed by `check-config` never shows the token.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "[redacted]" })
    }
}

/// The whole configuration, as read from TOML (after defaults and overrides).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory of the daemon's own state: the sled outbox (`<data_dir>/queue`) and the local
    /// store (`<data_dir>/sessions.db`). Default: `$XDG_STATE_HOME/opencode-telemetry`
    /// (`~/.local/state/opencode-telemetry`) on Linux, the platform data dir elsewhere.
    pub data_dir: PathBuf,
    /// Where OpenCode's database is and how it is polled.
    pub source: SourceConfig,
    /// What goes into each record and when it is exported.
    pub export: ExportConfig,
    /// What of a record may leave the machine (see [`crate::export::privacy`]).
    pub privacy: crate::export::privacy::PrivacyConfig,
    /// The Convex deployment (the sink when `convex.url` is set).
    pub convex: ConvexConfig,
    /// The deprecated NDJSON file (a second local sink while `local.path` is set).
    pub local: LocalConfig,
    /// The sled outbox.
    pub queue: QueueConfig,
    /// Process-level settings.
    pub service: ServiceConfig,
}

/// `[source]`: OpenCode's SQLite database.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// Path of `opencode.db`. Default: resolved the way OpenCode does (see [`crate::source::opencode::path::default_db_path`]).
    pub db_path: PathBuf,
    /// How often the database is polled (ms). A poll where nothing was committed costs one
    /// `PRAGMA data_version`.
    pub poll_interval_ms: u64,
    /// SQLite busy timeout of the read-only connection (ms).
    pub busy_timeout_ms: u64,
}

/// `[export]`: record contents and export timing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// A session must stay idle this long (ms) before it is exported; transitions inside the
    /// window give one export.
    pub debounce_ms: u64,
    /// Include per-message summaries with their text (`messages`).
    pub include_messages: bool,
    /// Include the todo list (`todos`).
    pub include_todos: bool,
    /// Do not export subagent (child) sessions as records of their own; they are summarised in
    /// their parent's `children` and `rollup` instead.
    pub skip_subagent_sessions: bool,
    /// A session idle with open todos is exported anyway after this long idle (s).
    pub final_after_secs: u64,
    /// A turn that never completed (OpenCode crashed mid-turn) counts as ended after this long
    /// without any write to the session (s).
    pub stale_after_secs: u64,
    /// Longest message text kept per message with `include_messages` (characters).
    pub max_message_chars: usize,
}

/// `[convex]`: the Convex deployment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConvexConfig {
    /// The deployment: its HTTP-actions URL `https://happy-otter-123.convex.site`, or its
    /// `https://happy-otter-123.convex.cloud` URL (the `.site` one is derived from it). Any other
    /// URL (a self-hosted backend's HTTP-actions port, a custom domain) is the HTTP-actions
    /// origin as given. Records go to `POST <origin>/ingest` besides the local store. Empty: the local store only.
    /// Plain `http://` is accepted only for loopback hosts.
    pub url: String,
    /// This machine's device token (`npx convex run devices:create`), or the legacy shared
    /// `INGEST_TOKEN`. Prefer `opencode-telemetry login`, which stores it in the credentials file
    /// ([`credentials_path`]); that file and `OPENCODE_TELEMETRY_INGEST_TOKEN` win over this key.
    pub ingest_token: Secret,
    /// Most records per `POST /ingest` request (1..=500; a batch is also cut at 8 MiB of
    /// record JSON). One record due goes alone; more go together.
    pub batch_size: usize,
    /// Timeout of one HTTP request (s).
    pub request_timeout_secs: u64,
    /// First retry delay (ms); doubles per failure, with full jitter.
    pub initial_backoff_ms: u64,
    /// Cap of the retry delay, and of any `Retry-After` the server sends (s).
    pub max_backoff_secs: u64,
}

/// `[local]`: **deprecated**. Before the local store (`<data_dir>/sessions.db`), records were
/// appended to an NDJSON file here. The key is still accepted: while `path` is set the file keeps
/// receiving every record as a sink of its own beside the store (one WARN at start says so);
/// unset (the default), no file is written. `opencode-telemetry export --format ndjson` makes the
/// same lines from the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    /// NDJSON file the records are also appended to, one per line. Default: empty (none).
    pub path: PathBuf,
}

/// `[queue]`: the sled outbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Upper bound of the pending records' bytes. When reached the daemon stops reading the
    /// source (it can be re-read later) instead of dropping anything. Default 64 MiB (about
    /// 40,000 sessions' records): it also bounds the memory of opening a full outbox, about
    /// 1.2 × this plus 20 MiB (README "Speed"), which the unit's `MemoryMax` allows for.
    pub max_bytes: u64,
    /// sled page cache (bytes). sled's own default is 1 GiB, far too much for a background service.
    pub cache_capacity_bytes: u64,
}

/// `[service]`: process-level settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// On SIGTERM/SIGINT, the longest the daemon waits for an in-flight request before it
    /// flushes the outbox and exits (s).
    pub shutdown_grace_secs: u64,
    /// Log filter (`tracing` `EnvFilter` syntax, e.g. `info` or `opencode_telemetry=debug`);
    /// `RUST_LOG` wins when set.
    pub log_level: String,
    /// How log lines on stderr look (see [`LogFormat`]).
    pub log_format: LogFormat,
}

/// `service.log_format`: the shape of the log lines the daemon writes to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `journald` when stderr is connected to the journal (`JOURNAL_STREAM` set: no timestamp,
    /// which journald adds, no colours), else `text`.
    #[default]
    Auto,
    /// One human-readable line per event: timestamp (UTC, RFC 3339), level, message, fields;
    /// colours only when stderr is a terminal.
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields.message`, the event's fields,
    /// `target`), for log shippers.
    Json,
}

impl LogFormat {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Auto => "auto",
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: default_data_dir(),
            source: SourceConfig::default(),
            export: ExportConfig::default(),
            privacy: crate::export::privacy::PrivacyConfig::default(),
            convex: ConvexConfig::default(),
            local: LocalConfig::default(),
            queue: QueueConfig::default(),
            service: ServiceConfig::default(),
        }
    }
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            db_path: PathBuf::new(),
            poll_interval_ms: 1000,
            busy_timeout_ms: 5000,
        }
    }
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            debounce_ms: 5000,
            include_messages: false,
            include_todos: true,
            skip_subagent_sessions: true,
            final_after_secs: 1800,
            stale_after_secs: 3600,
            max_message_chars: 4000,
        }
    }
}

impl Default for ConvexConfig {
    fn default() -> Self {
        ConvexConfig {
            url: String::new(),
            ingest_token: Secret::default(),
            batch_size: 100,
            request_timeout_secs: 30,
            initial_backoff_ms: 1000,
            max_backoff_secs: 300,
        }
    }
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            path: PathBuf::new(),
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_bytes: 64 * 1024 * 1024,
            cache_capacity_bytes: 8 * 1024 * 1024,
        }
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            shutdown_grace_secs: 10,
            log_level: "info".to_string(),
            log_format: LogFormat::Auto,
        }
    }
}

/// Why the configuration cannot be used. Every variant names the file; key-level problems name
/// the key. The CLI maps all of them to exit status 78.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists (or was named explicitly) but cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The TOML is malformed, a key is unknown, or a value has the wrong type.
    #[error("invalid config file {path}: {message}")]
    Invalid {
        /// The file (or `<defaults>` when no file was used).
        path: PathBuf,
        /// The parser's message, which names the key.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("invalid config file {path}: key `{key}`: {message}")]
    BadValue {
        /// The file (or `<defaults>`).
        path: PathBuf,
        /// Dotted key, e.g. `convex.url`.
        key: &'static str,
        /// What is wrong and what would be accepted.
        message: String,
    },
}

/// A loaded configuration and the file it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The effective configuration.
    pub config: Config,
    /// The file read, if any (the default location may be absent).
    pub path: Option<PathBuf>,
    /// True when the file itself sets `convex.ingest_token` (not only the environment).
    pub file_holds_secret: bool,
    /// The credentials file, when it sets `OPENCODE_TELEMETRY_INGEST_TOKEN` (see
    /// [`credentials_path`]; the environment may still override it).
    pub credentials_file: Option<PathBuf>,
}

/// The credentials file: `<platform config dir>/opencode-telemetry/env` (see the module doc).
/// `None` when the platform has no home directory.
pub fn credentials_path() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "opencode-telemetry")
        .map(|d| d.config_dir().join(CREDENTIALS_FILE_NAME))
}

/// The allow-listed `KEY=VALUE` pairs of a credentials file's text, in file order (a later line
/// wins). Lines are read as systemd's `EnvironmentFile=` reads them: blank lines and lines
/// starting with `#` or `;` are skipped, a line without `=` is ignored, key and value are
/// trimmed and one pair of matching surrounding quotes is removed from the value.
pub fn parse_credentials(text: &str) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let Some(key) = ENV_KEYS.iter().find(|k| **k == key.trim()) else {
            continue;
        };
        let value = value.trim();
        let unquoted = ['"', '\'']
            .iter()
            .find_map(|q| {
                value
                    .strip_prefix(*q)
                    .and_then(|v| v.strip_suffix(*q))
                    .filter(|_| value.len() >= 2)
            })
            .unwrap_or(value);
        out.push((*key, unquoted.to_string()));
    }
    out
}

/// Characters a device token may have to be stored by [`store_ingest_token`]: those of a
/// `devices:create` token (base64url) and of `openssl rand -hex`, plus `.~+/=`, none of which
/// systemd's `EnvironmentFile=` parser treats specially.
pub fn storable_token(token: &str) -> bool {
    !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~+/=".contains(&b))
}

/// Writes `token` into the credentials file `path` as `OPENCODE_TELEMETRY_INGEST_TOKEN=<token>`:
/// the line replaces every earlier line setting that variable, every other line is kept, and
/// the file is replaced atomically ([`crate::atomic_file`]) by one created with mode 0600 (so
/// the token is never readable by others, not even for a moment). The directory is created
/// (mode 0700) when missing.
///
/// # Errors
/// IO errors reading the old file or writing the new one (they name no token); a token that
/// [`storable_token`] refuses (`InvalidInput`).
pub fn store_ingest_token(path: &Path, token: &str) -> std::io::Result<()> {
    if !storable_token(token) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a device token has only letters, digits and -_.~+/=",
        ));
    }
    let old = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let mut text = String::with_capacity(old.len() + token.len() + 40);
    for line in old.lines() {
        let sets_token = line
            .split_once('=')
            .is_some_and(|(k, _)| k.trim() == ENV_INGEST_TOKEN);
        if !sets_token {
            text.push_str(line);
            text.push('\n');
        }
    }
    text.push_str(&format!("{ENV_INGEST_TOKEN}={token}\n"));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            let mut b = std::fs::DirBuilder::new();
            b.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
            b.create(dir)?;
        }
    }
    crate::atomic_file::write(path, text.as_bytes())
}

/// Where the config file is looked for when neither `--config` nor
/// `OPENCODE_TELEMETRY_CONFIG` names one.
pub fn default_config_path() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "opencode-telemetry")
        .map(|d| d.config_dir().join("config.toml"))
}

/// Default `data_dir`: the platform state dir (Linux `$XDG_STATE_HOME/opencode-telemetry`), else
/// the platform local data dir.
pub fn default_data_dir() -> PathBuf {
    match directories::ProjectDirs::from("", "", "opencode-telemetry") {
        Some(d) => d
            .state_dir()
            .unwrap_or_else(|| d.data_local_dir())
            .to_path_buf(),
        None => PathBuf::from(".opencode-telemetry"),
    }
}

/// Command-line overrides applied after the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--config PATH` (or `OPENCODE_TELEMETRY_CONFIG`, resolved by clap).
    pub config_path: Option<PathBuf>,
    /// `--db PATH`.
    pub db_path: Option<PathBuf>,
}

/// Loads, merges and validates the configuration.
///
/// # Errors
/// [`ConfigError`] naming the file and, where it applies, the key.
pub fn load(overrides: &Overrides) -> Result<Loaded, ConfigError> {
    load_with(overrides, credentials_path().as_deref())
}

/// [`load`] with the credentials file at `credentials` (`None`: none).
fn load_with(overrides: &Overrides, credentials: Option<&Path>) -> Result<Loaded, ConfigError> {
    let creds_text = match credentials {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(ConfigError::Unreadable {
                    path: p.to_path_buf(),
                    source,
                })
            }
        },
        None => None,
    };
    let creds = creds_text
        .as_deref()
        .map(parse_credentials)
        .unwrap_or_default();
    let credentials_file = creds
        .iter()
        .any(|(k, v)| *k == ENV_INGEST_TOKEN && !v.is_empty())
        .then(|| credentials.map(Path::to_path_buf))
        .flatten();
    let (path, explicit) = match &overrides.config_path {
        Some(p) => (Some(p.clone()), true),
        None => (default_config_path(), false),
    };
    let file_text = match &path {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(text) => Some(text),
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(ConfigError::Unreadable {
                    path: p.clone(),
                    source,
                })
            }
        },
        None => None,
    };
    let used_path = file_text.as_ref().and(path.clone());
    let shown = used_path
        .clone()
        .unwrap_or_else(|| PathBuf::from("<defaults>"));
    let text = file_text.as_deref().unwrap_or("");
    let mut secrets = file_secrets(text);
    secrets.extend(
        creds
            .iter()
            .filter(|(k, v)| *k == ENV_INGEST_TOKEN && v.len() >= 4)
            .map(|(_, v)| v.clone()),
    );
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let scrub = |e: ConfigError| scrub_error(e, &secrets);
    let mut config = parse(text, &shown).map_err(scrub)?;
    let file_holds_secret = !config.convex.ingest_token.is_empty();
    apply_env(&mut config, &creds).map_err(scrub)?;
    paths(&mut config, &shown).map_err(scrub)?;
    if let Some(db) = &overrides.db_path {
        // A command-line path is the user's, relative to where they run the command.
        config.source.db_path = std::path::absolute(db).unwrap_or_else(|_| db.clone());
    }
    finish(&mut config, &shown).map_err(scrub)?;
    Ok(Loaded {
        config,
        path: used_path,
        file_holds_secret,
        credentials_file,
    })
}

/// Values that must not appear in an error message: the ingest token from the environment,
/// and whatever stands right of `=` on any line of the file that sets an `ingest_token` key
/// (with and without its quotes; the TOML may be too broken to parse).
fn file_secrets(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(token) = std::env::var(ENV_INGEST_TOKEN) {
        out.push(token);
    }
    for line in text.lines() {
        // `ingest_token = "…"`, `convex.ingest_token = …`, `{ ingest_token = "…", … }`.
        let Some(at) = line.find("ingest_token") else {
            continue;
        };
        let Some((_, value)) = line[at..].split_once('=') else {
            continue;
        };
        let value = value.trim_start();
        let quote = value.chars().next().filter(|c| *c == '"' || *c == '\'');
        let inner = match quote {
            Some(q) => {
                let rest = &value[1..];
                rest.find(q).map_or(rest, |end| &rest[..end])
            }
            None => value
                .split(|c: char| c.is_whitespace() || c == ',' || c == '}')
                .next()
                .unwrap_or(""),
        };
        out.push(value.trim_end().to_string());
        out.push(inner.to_string());
    }
    out.retain(|s| s.len() >= 4 && s != "\"\"");
    // Longest first, so a quoted value is cut before its unquoted part.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out
}

/// `text` with every one of `secrets` replaced by `[redacted]`.
pub(crate) fn redact(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_string();
    for s in secrets {
        if !s.is_empty() && text.contains(s.as_str()) {
            text = text.replace(s.as_str(), "[redacted]");
        }
    }
    text
}

fn scrub_error(e: ConfigError, secrets: &[String]) -> ConfigError {
    match e {
        ConfigError::Invalid { path, message } => ConfigError::Invalid {
            path,
            message: redact(&message, secrets),
        },
        ConfigError::BadValue { path, key, message } => ConfigError::BadValue {
            path,
            key,
            message: redact(&message, secrets),
        },
        other => other,
    }
}

/// Parses TOML text into a [`Config`] with defaults for missing keys, without environment
/// overrides or validation. `path` is only used in error messages.
///
/// # Errors
/// [`ConfigError::Invalid`] for malformed TOML, unknown keys and wrongly typed values.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let built = ::config::Config::builder()
        .add_source(::config::File::from_str(text, ::config::FileFormat::Toml))
        .build()
        .map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    built
        .try_deserialize::<Config>()
        .map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// Applies the allow-listed variables: from the environment when set there (non-empty), else
/// from the credentials file's pairs `creds`.
fn apply_env(config: &mut Config, creds: &[(&'static str, String)]) -> Result<(), ConfigError> {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| {
                creds
                    .iter()
                    .rev()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.clone())
                    .filter(|v| !v.is_empty())
            })
    };
    if let Some(url) = var(ENV_CONVEX_URL) {
        config.convex.url = url;
    }
    if let Some(token) = var(ENV_INGEST_TOKEN) {
        config.convex.ingest_token = Secret::new(token);
    }
    if let Some(dir) = var(ENV_DATA_DIR) {
        config.data_dir = PathBuf::from(dir);
    }
    if let Some(format) = var(ENV_LOG_FORMAT) {
        config.service.log_format = match format.as_str() {
            "auto" => LogFormat::Auto,
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError::BadValue {
                    path: PathBuf::from(format!("${ENV_LOG_FORMAT}")),
                    key: "service.log_format",
                    message: format!("must be auto, text or json, got {other:?}"),
                })
            }
        };
    }
    Ok(())
}

/// `~` or `~/…` at the start of a path: the home directory (as the shell would expand it).
fn expand_home(p: &Path) -> PathBuf {
    let home = || directories::BaseDirs::new().map(|d| d.home_dir().to_path_buf());
    match p.strip_prefix("~") {
        Ok(rest) => match home() {
            Some(home) => home.join(rest),
            None => p.to_path_buf(),
        },
        Err(_) => p.to_path_buf(),
    }
}

/// Expands `~/` in the path keys and refuses relative ones: the service runs with another
/// working directory than the shell that ran `install`, so a relative path would mean two
/// places.
fn paths(config: &mut Config, path: &Path) -> Result<(), ConfigError> {
    for (key, value) in [
        ("data_dir", &mut config.data_dir),
        ("source.db_path", &mut config.source.db_path),
        ("local.path", &mut config.local.path),
    ] {
        if value.as_os_str().is_empty() {
            continue;
        }
        *value = expand_home(value);
        if value.is_relative() {
            return Err(ConfigError::BadValue {
                path: path.to_path_buf(),
                key,
                message: format!(
                    "must be an absolute path or start with ~/, got {:?}",
                    value.display().to_string()
                ),
            });
        }
    }
    Ok(())
}

/// The largest value of a key in milliseconds: what SQLite's busy timeout and the timers
/// (`i32` milliseconds at the C boundary) take — about 24.8 days.
const MAX_MS: u64 = i32::MAX as u64;

/// The largest value of a key in seconds: 100 years, "never" for the timers (tests and users set
/// `stale_after_secs` to ten years to turn stale exports off), far from overflowing the
/// millisecond arithmetic.
const MAX_SECS: u64 = 100 * 365 * 24 * 3600;

/// Fills derived defaults (`source.db_path`) and validates every value.
fn finish(config: &mut Config, path: &Path) -> Result<(), ConfigError> {
    let bad = |key: &'static str, message: String| ConfigError::BadValue {
        path: path.to_path_buf(),
        key,
        message,
    };
    if config.source.db_path.as_os_str().is_empty() {
        config.source.db_path = crate::source::opencode::path::default_db_path();
    }
    if config.data_dir.as_os_str().is_empty() {
        return Err(bad("data_dir", "must not be empty".into()));
    }
    for (key, value, max, unit) in [
        (
            "source.poll_interval_ms",
            config.source.poll_interval_ms,
            MAX_MS,
            "milliseconds",
        ),
        (
            "source.busy_timeout_ms",
            config.source.busy_timeout_ms,
            MAX_MS,
            "milliseconds",
        ),
        (
            "export.debounce_ms",
            config.export.debounce_ms,
            MAX_MS,
            "milliseconds",
        ),
        (
            "export.final_after_secs",
            config.export.final_after_secs,
            MAX_SECS,
            "seconds",
        ),
        (
            "export.stale_after_secs",
            config.export.stale_after_secs,
            MAX_SECS,
            "seconds",
        ),
        (
            "convex.request_timeout_secs",
            config.convex.request_timeout_secs,
            MAX_SECS,
            "seconds",
        ),
        (
            "convex.initial_backoff_ms",
            config.convex.initial_backoff_ms,
            MAX_MS,
            "milliseconds",
        ),
        (
            "convex.max_backoff_secs",
            config.convex.max_backoff_secs,
            MAX_SECS,
            "seconds",
        ),
        (
            "service.shutdown_grace_secs",
            config.service.shutdown_grace_secs,
            MAX_SECS,
            "seconds",
        ),
    ] {
        if value > max {
            return Err(bad(
                key,
                format!("must be at most {max} ({unit}), got {value}"),
            ));
        }
    }
    if config.source.poll_interval_ms == 0 {
        return Err(bad(
            "source.poll_interval_ms",
            "must be at least 1 (milliseconds)".into(),
        ));
    }
    if config.convex.batch_size == 0 || config.convex.batch_size > 500 {
        return Err(bad(
            "convex.batch_size",
            format!(
                "must be 1..=500 (the ingest HTTP action's limit), got {}",
                config.convex.batch_size
            ),
        ));
    }
    if config.convex.request_timeout_secs == 0 {
        return Err(bad(
            "convex.request_timeout_secs",
            "must be at least 1".into(),
        ));
    }
    if config.convex.initial_backoff_ms == 0 {
        return Err(bad(
            "convex.initial_backoff_ms",
            "must be at least 1".into(),
        ));
    }
    if config.convex.max_backoff_secs == 0 {
        return Err(bad("convex.max_backoff_secs", "must be at least 1".into()));
    }
    if config.queue.max_bytes < 1024 * 1024 {
        return Err(bad(
            "queue.max_bytes",
            format!(
                "must be at least 1048576 (1 MiB), got {}",
                config.queue.max_bytes
            ),
        ));
    }
    if config.export.max_message_chars == 0 {
        return Err(bad("export.max_message_chars", "must be at least 1".into()));
    }
    if let Err(message) = tracing_subscriber::EnvFilter::try_new(&config.service.log_level) {
        return Err(bad("service.log_level", message.to_string()));
    }
    if !config.convex.url.is_empty() {
        crate::sink::convex::url::check(&config.convex.url).map_err(|m| bad("convex.url", m))?;
    }
    Ok(())
}

impl Loaded {
    /// The ssh-style warning for the credentials file or a config file that holds the ingest
    /// token and whose mode lets group or others read or write it (`mode & 0o077 != 0`); `None`
    /// when no such file holds the secret, it is private, or there is no file (and always off
    /// Unix).
    pub fn permission_warning(&self) -> Option<String> {
        if let Some(creds) = &self.credentials_file {
            if let Some(mode) = file_mode(creds).filter(|m| m & 0o077 != 0) {
                return Some(format!(
                    "credentials file {} holds {ENV_INGEST_TOKEN} and is accessible by group or \
                     others (mode {:03o}); run `chmod 600 {}`",
                    creds.display(),
                    mode & 0o777,
                    creds.display()
                ));
            }
        }
        let path = self.path.as_ref()?;
        if !self.file_holds_secret {
            return None;
        }
        let mode = file_mode(path)?;
        (mode & 0o077 != 0).then(|| {
            format!(
                "config file {} holds convex.ingest_token and is accessible by group or others \
                 (mode {:03o}); run `chmod 600 {}`, or move the token to {ENV_INGEST_TOKEN}",
                path.display(),
                mode & 0o777,
                path.display()
            )
        })
    }

    /// Every warning about the files the daemon trusts: [`Loaded::permission_warning`], then,
    /// for the config file, the credentials file and `data_dir` (those that exist), one when
    /// group or others may write it (`mode & 0o022 != 0`) or another user owns it — whoever can
    /// write them decides what is exported and where to (a `convex.url` of theirs, a `[privacy]`
    /// level of `content`). Empty off Unix.
    pub fn warnings(&self) -> Vec<String> {
        let mut out: Vec<String> = self.permission_warning().into_iter().collect();
        let mut check = |what: &str, path: &Path| {
            if let Some(w) = foreign_or_writable(what, path) {
                out.push(w);
            }
        };
        if let Some(p) = &self.path {
            check("config file", p);
        }
        if let Some(p) = &self.credentials_file {
            check("credentials file", p);
        }
        check("data_dir", &self.config.data_dir);
        out
    }

    /// Checks what only delivering needs: the ingest token when `convex.url` is set. `run`,
    /// `once` and `check-config` call it; `status` and `queue` work without the secret.
    ///
    /// # Errors
    /// [`ConfigError::BadValue`] for `convex.ingest_token`.
    pub fn check_delivery(&self) -> Result<(), ConfigError> {
        let bad_token = |message: String| ConfigError::BadValue {
            path: self
                .path
                .clone()
                .unwrap_or_else(|| PathBuf::from("<defaults>")),
            key: "convex.ingest_token",
            message,
        };
        let token = self.config.convex.ingest_token.expose();
        if self.config.uses_convex() && token.is_empty() {
            return Err(bad_token(format!(
                "is required when convex.url is set: run `opencode-telemetry login` with the device token (or set {ENV_INGEST_TOKEN})"
            )));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            // Never the value: only what is wrong with it.
            return Err(bad_token(
                "must be printable ASCII without spaces (it is sent as an HTTP bearer token); \
                 `openssl rand -hex 32` makes a good one"
                    .into(),
            ));
        }
        Ok(())
    }
}

#[cfg(unix)]
fn file_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).ok().map(|m| m.permissions().mode())
}

#[cfg(not(unix))]
fn file_mode(_path: &Path) -> Option<u32> {
    None
}

/// The warning for `path` (`what`: "config file", …) when group or others may write it or it
/// belongs to another user; `None` when it is fine or does not exist.
#[cfg(unix)]
fn foreign_or_writable(what: &str, path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let me = rustix::process::getuid().as_raw();
    if meta.uid() != me {
        return Some(format!(
            "{what} {} belongs to another user (uid {}, you are {me}): they decide what is \
             exported and where; use one of your own",
            path.display(),
            meta.uid()
        ));
    }
    let mode = meta.mode();
    (mode & 0o022 != 0).then(|| {
        format!(
            "{what} {} is writable by group or others (mode {:03o}): they could change what is \
             exported and where; run `chmod go-w {}`",
            path.display(),
            mode & 0o777,
            path.display()
        )
    })
}

#[cfg(not(unix))]
fn foreign_or_writable(_what: &str, _path: &Path) -> Option<String> {
    None
}

impl Config {
    /// Directory of the sled outbox: `<data_dir>/queue`.
    pub fn queue_dir(&self) -> PathBuf {
        self.data_dir.join("queue")
    }
    /// `source.poll_interval_ms` as a [`Duration`].
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.source.poll_interval_ms)
    }
    /// True when records go to Convex too (besides the local store).
    pub fn uses_convex(&self) -> bool {
        !self.convex.url.is_empty()
    }
    /// True when records are also appended to the deprecated NDJSON file (`local.path` set).
    pub fn uses_ndjson(&self) -> bool {
        !self.local.path.as_os_str().is_empty()
    }
    /// The local store: `<data_dir>/sessions.db`.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("sessions.db")
    }
    /// The effective configuration as TOML, with the ingest token redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Config, ConfigError> {
        let mut c = parse(text, Path::new("/etc/x.toml"))?;
        c.source.db_path = PathBuf::from("/tmp/oc.db");
        finish(&mut c, Path::new("/etc/x.toml"))?;
        Ok(c)
    }

    #[test]
    fn the_example_config_parses_and_equals_the_defaults() {
        let example = parse_str(EXAMPLE_CONFIG).expect("example config parses");
        let defaults = parse_str("").unwrap();
        assert_eq!(
            example.to_redacted_toml(),
            defaults.to_redacted_toml(),
            "config.example.toml must state the built-in defaults"
        );
    }

    #[test]
    fn an_unknown_key_is_named_with_the_file() {
        let err = parse_str("[source]\npoll_intervall_ms = 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("poll_intervall_ms"), "{err}");
        assert!(err.contains("/etc/x.toml"), "{err}");
    }

    #[test]
    fn a_wrongly_typed_value_is_named_with_its_key() {
        let err = parse_str("[export]\ndebounce_ms = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("debounce_ms"), "{err}");
        assert!(err.contains("/etc/x.toml"), "{err}");
    }

    /// A config for `https://a.convex.site` with `token`, as if read from `/etc/x.toml`.
    fn convex_loaded(token: &str) -> Loaded {
        let mut config = parse_str("[convex]\nurl = \"https://a.convex.site\"\n").unwrap();
        config.convex.ingest_token = Secret::new(token);
        Loaded {
            config,
            path: Some(PathBuf::from("/etc/x.toml")),
            file_holds_secret: false,
            credentials_file: None,
        }
    }

    #[test]
    fn a_convex_url_without_a_token_is_refused_for_delivery_only() {
        let err = convex_loaded("").check_delivery().unwrap_err().to_string();
        assert!(
            err.contains("convex.ingest_token") && err.contains("/etc/x.toml"),
            "{err}"
        );
    }

    #[test]
    fn a_token_that_cannot_be_a_bearer_header_is_refused_without_showing_it() {
        for token in [
            "has space-secret",
            "tab\tsecret",
            "é-secret",
            "line\nsecret",
        ] {
            let loaded = convex_loaded(token);
            let err = loaded.check_delivery().unwrap_err().to_string();
            assert!(
                err.contains("convex.ingest_token") && err.contains("printable ASCII"),
                "{err}"
            );
            assert!(!err.contains("secret"), "{err}");
        }
        let loaded = convex_loaded("0123abcdef~!#$%&'*+-.^_`|");
        assert!(loaded.check_delivery().is_ok());
    }

    #[test]
    fn the_token_never_appears_in_debug_or_rendered_output() {
        let c = parse_str(
            "[convex]\nurl = \"https://a.convex.cloud\"\ningest_token = \"tok-very-secret\"\n",
        )
        .unwrap();
        assert_eq!(c.convex.ingest_token.expose(), "tok-very-secret");
        assert!(!format!("{c:?}").contains("tok-very-secret"));
        assert!(!c.to_redacted_toml().contains("tok-very-secret"));
    }

    fn load_file(text: &str, mode: u32) -> (tempfile::TempDir, Result<Loaded, ConfigError>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            format!("data_dir = \"{}\"\n{text}", dir.path().display()),
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let _ = mode;
        let loaded = load_with(
            &Overrides {
                config_path: Some(path),
                db_path: Some(PathBuf::from("/tmp/oc.db")),
            },
            None,
        );
        (dir, loaded)
    }

    /// Loads `config` (TOML) with the credentials file `creds` (text, mode) beside it.
    fn load_with_credentials(
        config: &str,
        creds: &str,
        mode: u32,
    ) -> (tempfile::TempDir, Result<Loaded, ConfigError>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            format!("data_dir = \"{}\"\n{config}", dir.path().display()),
        )
        .unwrap();
        let env = dir.path().join("env");
        std::fs::write(&env, creds).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&env, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let _ = mode;
        let loaded = load_with(
            &Overrides {
                config_path: Some(path),
                db_path: Some(PathBuf::from("/tmp/oc.db")),
            },
            Some(&env),
        );
        (dir, loaded)
    }

    #[test]
    fn the_credentials_file_supplies_the_token_over_the_config_file() {
        if std::env::var_os(ENV_INGEST_TOKEN).is_some() {
            return; // The environment would win; nothing to check here.
        }
        let (dir, loaded) = load_with_credentials(
            WITH_TOKEN,
            "# written by login\nOTHER=1\nOPENCODE_TELEMETRY_INGEST_TOKEN=\"tok-from-file-0001\"\n",
            0o600,
        );
        let loaded = loaded.unwrap();
        assert_eq!(
            loaded.config.convex.ingest_token.expose(),
            "tok-from-file-0001"
        );
        assert_eq!(loaded.credentials_file, Some(dir.path().join("env")));
        // A file without the token names no credentials file.
        let (_d, loaded) = load_with_credentials(WITH_TOKEN, "OTHER=1\n", 0o644);
        let loaded = loaded.unwrap();
        assert_eq!(loaded.credentials_file, None);
        assert_eq!(
            loaded.config.convex.ingest_token.expose(),
            "tok-perm-0123456789"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_readable_credentials_file_is_warned_about_and_its_token_never_shown() {
        if std::env::var_os(ENV_INGEST_TOKEN).is_some() {
            return;
        }
        let (dir, loaded) = load_with_credentials(
            "",
            "OPENCODE_TELEMETRY_INGEST_TOKEN=tok-creds-0002\n",
            0o644,
        );
        let w = loaded.unwrap().permission_warning().unwrap();
        assert!(
            w.contains(&dir.path().join("env").display().to_string()),
            "{w}"
        );
        assert!(w.contains("644") && !w.contains("tok-creds-0002"), "{w}");
        // A broken config file next to it: the error does not quote the file's token.
        let (_d, loaded) = load_with_credentials(
            "[convex]\nurl = \"tok-creds-0002\" x\n",
            "OPENCODE_TELEMETRY_INGEST_TOKEN=tok-creds-0002\n",
            0o600,
        );
        let err = loaded.unwrap_err().to_string();
        assert!(!err.contains("tok-creds-0002"), "{err}");
    }

    #[test]
    fn credentials_lines_are_read_as_systemd_reads_them() {
        let pairs = parse_credentials(
            "; comment\n\n  OPENCODE_TELEMETRY_CONVEX_URL = 'https://a.convex.site'  \n\
             RUST_LOG=debug\nnot a pair\nOPENCODE_TELEMETRY_INGEST_TOKEN=abc\n\
             OPENCODE_TELEMETRY_INGEST_TOKEN=\"def\"\n",
        );
        assert_eq!(
            pairs,
            [
                (ENV_CONVEX_URL, "https://a.convex.site".to_string()),
                (ENV_INGEST_TOKEN, "abc".to_string()),
                (ENV_INGEST_TOKEN, "def".to_string()),
            ]
        );
    }

    #[test]
    fn storing_the_token_replaces_its_line_keeps_the_others_and_makes_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/dir/env");
        store_ingest_token(&path, "first-0001").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "OPENCODE_TELEMETRY_INGEST_TOKEN=first-0001\n"
        );
        std::fs::write(
            &path,
            "RUST_LOG=info\nOPENCODE_TELEMETRY_INGEST_TOKEN=first-0001\n# keep\n",
        )
        .unwrap();
        store_ingest_token(&path, "second_0002-AZ").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "RUST_LOG=info\n# keep\nOPENCODE_TELEMETRY_INGEST_TOKEN=second_0002-AZ\n"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(path.parent().unwrap()), 0o700);
        }
        for bad in ["", "has space", "quote\"", "new\nline", "dollar$"] {
            let e = store_ingest_token(&path, bad).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        }
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("second_0002-AZ"));
    }

    const WITH_TOKEN: &str =
        "[convex]\nurl = \"https://a.convex.cloud\"\ningest_token = \"tok-perm-0123456789\"\n";

    #[cfg(unix)]
    #[test]
    fn a_token_in_a_group_or_world_accessible_file_is_warned_about_like_ssh() {
        for mode in [0o644, 0o640, 0o604, 0o660, 0o602] {
            let (_dir, loaded) = load_file(WITH_TOKEN, mode);
            let loaded = loaded.unwrap();
            let path = loaded.path.clone().unwrap();
            let w = loaded
                .permission_warning()
                .unwrap_or_else(|| panic!("no warning for mode {mode:o}"));
            assert!(w.contains(&path.display().to_string()), "{w}");
            assert!(w.contains(&format!("chmod 600 {}", path.display())), "{w}");
            assert!(w.contains(&format!("{mode:03o}")), "{w}");
            assert!(!w.contains("tok-perm-0123456789"), "{w}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_private_file_or_a_file_without_a_token_gets_no_warning() {
        for mode in [0o600, 0o400] {
            let (_dir, loaded) = load_file(WITH_TOKEN, mode);
            assert_eq!(loaded.unwrap().permission_warning(), None, "mode {mode:o}");
        }
        // World-readable, but the token is not in it (it comes from the environment).
        let (_dir, loaded) = load_file("[convex]\nurl = \"https://a.convex.cloud\"\n", 0o644);
        assert_eq!(loaded.unwrap().permission_warning(), None);
    }

    #[test]
    fn a_malformed_line_around_the_token_is_reported_without_the_token() {
        let cases = [
            // Unterminated string: the TOML parser quotes the line.
            "[convex]\ningest_token = \"tok-sekrit-0001\n",
            // Wrong type next to it on the same line.
            "[convex]\ningest_token = \"tok-sekrit-0001\" batch_size = 3\n",
            // An inline table, broken after the token.
            "convex = { ingest_token = \"tok-sekrit-0001\", batch_size = }\n",
            // The token as a bare (invalid) value.
            "[convex]\ningest_token = tok-sekrit-0001\n",
        ];
        for text in cases {
            // The parser's own message quotes the token: the redaction is what removes it.
            let raw = parse(text, Path::new("/x.toml")).unwrap_err().to_string();
            assert!(raw.contains("tok-sekrit-0001"), "{raw}");
            let (_dir, loaded) = load_file(text, 0o600);
            let err = loaded.unwrap_err().to_string();
            assert!(err.contains("config.toml"), "{err}");
            assert!(!err.contains("tok-sekrit-0001"), "token in error: {err}");
        }
    }
}
