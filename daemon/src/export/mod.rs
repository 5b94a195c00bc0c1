//! Export records: the [`SessionExport`] shape and the pure builder that makes one from a
//! source-neutral session snapshot.
//!
//! - `record`: the wire shape ([`SessionExport`] and its parts, re-exported here) (what the outbox stores and the sinks receive).
//! - [`build`](build()): snapshot + trigger + context → record.
//! - [`aggregate`]: one function per aggregate of a session's own rows.
//! - [`fit`](mod@fit): shortening a record to Convex's document limits, visibly.
//! - [`validate`]: the deployment's content rules (finite, non-negative numbers, timestamps in
//!   2000-01-01..now + 1 day, string and array limits) and the corrections that keep them.
//! - [`hash`]: the content hash a sink uses to see that a re-export changes nothing.
//! - [`privacy`]: the `[privacy]` policy (levels, switches, hashed paths, tombstones) and the
//!   class of every field, applied by [`build()`] before anything else sees the record.
//! - [`redact`]: the secret-finding rules (gitleaks' and ours) every free text goes through.

pub mod aggregate;
mod build;
pub mod fit;
pub mod hash;
pub mod privacy;
mod record;
pub mod redact;
pub mod validate;

pub use build::*;
pub use fit::fit;
pub use hash::seal;
pub use privacy::{OnDelete, PathKey, Privacy};
pub use record::*;
