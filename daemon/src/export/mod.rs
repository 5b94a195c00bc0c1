//! Export records: the [`SessionExport`] shape and the pure builder that makes one from a
//! session snapshot.

mod build;
pub mod fit;
mod record;

pub use build::*;
pub use fit::fit;
pub use record::*;
