//! Export records: the [`SessionExport`] shape and the pure builder that makes one from a
//! source-neutral session snapshot.
//!
//! - `record`: the wire shape ([`SessionExport`] and its parts, re-exported here) (what the outbox stores and the sinks receive).
//! - [`build`](build()): snapshot + trigger + context → record.
//! - [`aggregate`]: one function per aggregate of a session's own rows.
//! - [`fit`](mod@fit): shortening a record to Convex's document limits, visibly.

pub mod aggregate;
mod build;
pub mod fit;
mod record;

pub use build::*;
pub use fit::fit;
pub use record::*;
