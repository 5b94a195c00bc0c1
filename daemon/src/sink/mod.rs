//! Delivery to Convex or a local file (being written): the classification of an answer
//! ([`classify()`]) and the retry pacing ([`retry`]).

pub mod classify;
pub mod retry;

pub use classify::{classify, parse_retry_after, parse_retry_after_at, Classified, ItemResult};
pub use retry::{Pacer, RetryPolicy};
