//! Export records: the [`SessionExport`] shape and the pure builder that makes one from a
//! session snapshot.

mod build;
mod record;

pub use build::*;
pub use record::*;
