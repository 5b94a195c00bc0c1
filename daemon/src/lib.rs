//! opencode-telemetry: reads coding-agent sessions (OpenCode's SQLite database) without touching
//! them, decides when each session ended, and delivers one record per ended session to the
//! a local store (SQLite) and, when configured, the user's Convex deployment, through a durable
//! outbox with one lane per sink; `report` reads the store back.
//!
//! # Code map (in pipeline order; the structure and its invariants are in `ARCHITECTURE.md`)
//! - [`config`]: TOML + defaults + env overrides for secrets; one struct per section.
//! - [`source`]: the [`source::SessionSource`] seam and its source-neutral types;
//!   [`source::opencode`] reads OpenCode's database.
//! - [`track`]: the tracker and its pure rules: when a session is exported, and why
//!   ([`track::Trigger`]). No IO, no clock.
//! - [`export`]: builds [`export::SessionExport`] records from a session snapshot. Pure.
//! - [`identity`]: the device id and host name; [`clock`]: the wall clock; [`atomic_file`]:
//!   small files written whole or not at all; [`color`]: whether logs and tables may use colour
//!   (`--color`, `NO_COLOR`).
//! - [`queue`]: the durable sled outbox (one pending version per session, latest wins; one lane
//!   per sink).
//! - [`sink`]: what every sink shares (outcomes, limits, pacing); the local store in
//!   [`sink::store`], Convex in [`sink::convex`], the deprecated NDJSON file in [`sink::local`].
//! - [`daemon`]: the service: the run loop, [`daemon::pass`] (the one pass `run` and `once`
//!   share), the sender, reload, signals, sd_notify.
//! - [`cmd`]: the one-shot commands (`once`, `preview`, `login`, `status`, `check-config`, `queue`,
//!   `report`, `export`).
//! - [`install`]: `install` / `uninstall` for systemd and launchd.
//! - [`cli`]: the command line.

pub mod atomic_file;
pub mod cli;
pub mod clock;
pub mod cmd;
pub mod color;
pub mod config;
pub mod daemon;
pub mod export;
pub mod identity;
pub mod install;
pub mod queue;
pub mod sink;
pub mod source;
pub mod track;
