//! opencode-telemetry: exports OpenCode sessions from its SQLite database to Convex (or a local
//! NDJSON file), without touching OpenCode.
//!
//! # Layout (in pipeline order)
//! - [`config`]: TOML + defaults + env overrides for secrets; errors name the key and the file.
//! - [`source`]: the read-only OpenCode database reader ([`source::opencode`]) and the
//!   transition detector that infers `session.idle` / `session.error` / `session.deleted`.
//! - [`export`]: builds [`export::SessionExport`] records from a session snapshot. Pure: no IO,
//!   no clock (time is passed in).
//! - [`queue`]: the durable sled outbox (one pending version per session, latest wins).
//! - [`sink`]: delivery to Convex over its HTTP API, or to a local NDJSON file.
//! - [`service`]: the run loop (`run`), the one-pass job (`once`), and the sender.
//! - [`cli`]: the command line.

pub mod cli;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod daemon;
pub mod export;
pub mod identity;
pub mod install;
pub mod queue;
pub mod sink;
pub mod source;
pub mod track;
