//! The source: OpenCode's database, read-only.
//!
//! - [`opencode`]: the reader (connection, schema detection, row parsing).
//! - [`activity`]: busy or ended, from the newest rows — the rule behind `session.idle` and
//!   `session.error`.

pub mod opencode;
