//! Export records: the [`SessionExport`] shape and the pure builder that makes one from a
//! source-neutral session snapshot.
//!
//! - `record`: the wire shape ([`SessionExport`] and its parts, re-exported here) (what the outbox stores and the sinks receive).
//! - [`build`](build()): snapshot + trigger + context → record.
//! - [`aggregate`]: one function per aggregate of a session's own rows.
//! - [`fit`](mod@fit): shortening a record to Convex's document limits, visibly.
//! - [`hash`]: the content hash a sink uses to see that a re-export changes nothing.

pub mod aggregate;
mod build;
pub mod fit;
pub mod hash;
mod record;

pub use build::*;
pub use fit::fit;
pub use hash::seal;
pub use record::*;
