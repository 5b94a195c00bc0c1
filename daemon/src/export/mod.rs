//! Export records.
mod record;
pub use record::*;
