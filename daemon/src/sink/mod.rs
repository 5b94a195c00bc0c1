//! Delivery to Convex or a local file (being written): the classification of an answer
//! ([`classify()`]).

pub mod classify;

pub use classify::{classify, parse_retry_after, parse_retry_after_at, Classified, ItemResult};
