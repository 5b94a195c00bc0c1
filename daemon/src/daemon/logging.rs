//! Logging: `tracing` on stderr, reloadable on SIGHUP, and kept apart from progress bars.
//!
//! # Formats (`service.log_format`)
//! - `journald` (what `auto` picks when `JOURNAL_STREAM` is set, i.e. stderr goes to the
//!   journal): `<N>LEVEL message key=value…`, where `<N>` is the syslog priority prefix of
//!   sd-daemon(3) that journald reads off each stream line (ERROR 3, WARN 4, INFO 6,
//!   DEBUG/TRACE 7), so `journalctl -p warning` shows WARN and ERROR; no timestamp (journald
//!   adds its own) and no colours;
//! - `text` (what `auto` picks otherwise): `2026-01-01T12:00:00.000000Z  INFO message
//!   key=value…`, coloured as `--color` says ([`crate::color`]: by default only when
//!   stderr is a terminal and `NO_COLOR` is unset or empty);
//! - `json`: one object per line, `{"timestamp":…,"level":"INFO","fields":{"message":…,…},
//!   "target":…}`.
//!
//! # Levels
//! - `ERROR`: data was or may be lost, or an operator must act (a record dead-lettered, the
//!   ingest token refused, the outbox found corrupt, a fatal storage error, a rejected reload);
//! - `WARN`: something is wrong but the daemon copes and nothing is lost (delivery retried,
//!   outbox full so reading pauses, a source read retried, a setting that needs a restart);
//! - `INFO`: lifecycle (start, stop, reload and what changed, database opened) and one line
//!   per exported session;
//! - `DEBUG`/`TRACE`: per-batch and per-tick detail.
//!
//! The filter is `RUST_LOG` when set, else `service.log_level`. Both the filter and the format
//! can change on SIGHUP ([`reload()`]).
//!
//! # Progress bars
//! Log lines go through [`StderrWriter`], which writes them inside
//! [`indicatif::ProgressBar::suspend`] while a bar registered with [`ProgressGuard`] is drawn,
//! so a line never lands in the middle of a bar.

use std::io::{IsTerminal, Write};
use std::sync::{Mutex, OnceLock};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::{LogFormat, ServiceConfig};

type FilterLayer = reload::Layer<EnvFilter, Registry>;
type Filtered = tracing_subscriber::layer::Layered<FilterLayer, Registry>;
type BoxedFmt = Box<dyn Layer<Filtered> + Send + Sync + 'static>;

struct Handles {
    filter: reload::Handle<EnvFilter, Registry>,
    format: reload::Handle<BoxedFmt, Filtered>,
    /// `RUST_LOG` was set at start: it keeps precedence over `service.log_level`.
    env_filter: bool,
}

static HANDLES: OnceLock<Handles> = OnceLock::new();

/// The resolved shape of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Level and message, no timestamp, no colour (journald).
    Journald,
    /// Timestamped lines; colour on a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

/// What `format` means here and now (`auto` looks at `JOURNAL_STREAM`).
pub fn resolve(format: LogFormat) -> Style {
    match format {
        LogFormat::Text => Style::Text,
        LogFormat::Json => Style::Json,
        LogFormat::Auto if std::env::var_os("JOURNAL_STREAM").is_some() => Style::Journald,
        LogFormat::Auto => Style::Text,
    }
}

/// The sd-daemon(3) priority of a level: what journald files a line at.
pub fn syslog_priority(level: &tracing::Level) -> u8 {
    match *level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
}

/// Writes the `<N>` priority prefix ([`syslog_priority`]) before each line of the inner format.
struct SyslogPrefix<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for SyslogPrefix<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", syslog_priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

fn fmt_layer(style: Style) -> BoxedFmt {
    let base = tracing_subscriber::fmt::layer()
        .with_writer(|| StderrWriter)
        .with_target(false);
    match style {
        Style::Journald => {
            let inner = tracing_subscriber::fmt::format()
                .without_time()
                .with_target(false)
                .with_ansi(false);
            Box::new(base.with_ansi(false).event_format(SyslogPrefix(inner)))
        }
        Style::Text => {
            Box::new(base.with_ansi(crate::color::wanted(std::io::stderr().is_terminal())))
        }
        Style::Json => Box::new(base.json().with_target(true).with_ansi(false)),
    }
}

fn filter(level: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level))
}

/// Sets up `tracing` on stderr from `[service]` (see the module docs). Calling it twice keeps
/// the first set-up.
pub fn init(service: &ServiceConfig) {
    let (filter_layer, filter_handle) = reload::Layer::new(filter(&service.log_level));
    let (fmt, fmt_handle) =
        reload::Layer::<BoxedFmt, Filtered>::new(fmt_layer(resolve(service.log_format)));
    if tracing_subscriber::registry()
        .with(filter_layer)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        let _ = HANDLES.set(Handles {
            filter: filter_handle,
            format: fmt_handle,
            env_filter: std::env::var_os("RUST_LOG").is_some(),
        });
    }
}

/// Applies a new `log_level` / `log_format`. `RUST_LOG`, when it was set at start, keeps
/// precedence over `log_level`.
///
/// # Errors
/// A message when logging was not set up by [`init`] or a handle is gone.
pub fn reload(old: &ServiceConfig, new: &ServiceConfig) -> Result<(), String> {
    let handles = HANDLES.get().ok_or("logging was not initialised")?;
    if old.log_level != new.log_level {
        if handles.env_filter {
            tracing::warn!(
                log_level = %new.log_level,
                "service.log_level changed but RUST_LOG is set and keeps precedence"
            );
        } else {
            handles
                .filter
                .reload(EnvFilter::new(&new.log_level))
                .map_err(|e| e.to_string())?;
        }
    }
    if old.log_format != new.log_format {
        handles
            .format
            .reload(fmt_layer(resolve(new.log_format)))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The progress bar currently drawn on stderr, if any.
static ACTIVE_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn active_bar() -> Option<ProgressBar> {
    ACTIVE_BAR.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// stderr for log lines: each write happens with the active progress bar (if any) cleared and
/// redrawn after it.
#[derive(Debug, Clone, Copy, Default)]
pub struct StderrWriter;

impl Write for StderrWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match active_bar() {
            Some(bar) => bar.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match active_bar() {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf)),
            None => std::io::stderr().write_all(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// A progress bar on stderr while it lives: drawn only when stderr is a terminal (hidden, and
/// free of escape codes, otherwise); log lines are written around it. Dropping it clears it.
pub struct ProgressGuard {
    bar: ProgressBar,
}

impl ProgressGuard {
    /// A bar of `len` steps labelled `what` (e.g. "reading sessions").
    pub fn new(len: u64, what: &'static str) -> ProgressGuard {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(len), target);
        if let Ok(style) =
            ProgressStyle::with_template("{msg:>18} [{bar:30}] {pos}/{len} ({eta} left)")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what);
        if !bar.is_hidden() {
            *ACTIVE_BAR.lock().unwrap_or_else(|p| p.into_inner()) = Some(bar.clone());
        }
        ProgressGuard { bar }
    }

    /// The bar (to advance it from another thread: it is cheap to clone).
    pub fn bar(&self) -> &ProgressBar {
        &self.bar
    }
}

impl Drop for ProgressGuard {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
        // One bar at a time: the one registered is this one.
        *ACTIVE_BAR.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}
