//! Delivery to Convex or a local file (being written): the classification of an answer
//! ([`classify()`]), the retry pacing ([`retry`]) and the local NDJSON file sink ([`local`]).

pub mod classify;
pub mod local;
pub mod retry;

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::value::RawValue;

pub use classify::{classify, parse_retry_after, parse_retry_after_at, Classified, ItemResult};
pub use local::LocalSink;
pub use retry::{Pacer, RetryPolicy};

/// Why a sink cannot be built. Sending itself never fails with an error: see [`Classified`].
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// `convex.url` is not acceptable (not https, or plain http to a non-loopback host).
    #[error("convex url: {message}")]
    ConvexUrl {
        /// What is wrong with it.
        message: String,
    },
    /// `convex.url` is set but `convex.ingest_token` is empty.
    #[error("convex ingest token is empty")]
    MissingToken,
    /// The HTTP client cannot be built (TLS backend initialisation).
    #[error("cannot build the http client: {message}")]
    Client {
        /// The client builder's error.
        message: String,
    },
    /// The local file (or its directory) cannot be created, opened or repaired.
    #[error("local file {}: {source}", path.display())]
    Local {
        /// `local.path`.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
}

/// Checks that `bytes` is exactly one JSON object and returns it unparsed, with its
/// `sessionId` when that is a string. `Err` says what is wrong (never quoting the record).
pub(crate) fn parse_record(bytes: &[u8]) -> Result<(&RawValue, Option<String>), String> {
    #[derive(Deserialize)]
    struct Head<'a> {
        #[serde(rename = "sessionId", borrow, default)]
        session_id: Option<&'a RawValue>,
    }
    let raw: &RawValue =
        serde_json::from_slice(bytes).map_err(|e| format!("not valid json ({e})"))?;
    if !raw.get().starts_with('{') {
        return Err("not a json object".into());
    }
    let head: Head<'_> =
        serde_json::from_str(raw.get()).map_err(|e| format!("not a usable json object ({e})"))?;
    let session_id = head
        .session_id
        .and_then(|v| serde_json::from_str::<String>(v.get()).ok());
    Ok((raw, session_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_record_accepts_objects_only() {
        let (raw, id) = parse_record(br#" {"sessionId":"s1","x":[1]} "#).unwrap();
        assert_eq!(raw.get(), r#"{"sessionId":"s1","x":[1]}"#);
        assert_eq!(id.as_deref(), Some("s1"));
        assert_eq!(parse_record(br#"{"sessionId":7}"#).unwrap().1, None);
        assert_eq!(parse_record(b"{}").unwrap().1, None);
        for bad in [
            &b""[..],
            b"[]",
            b"null",
            b"\"x\"",
            b"{",
            b"{}{}",
            b"{\"a\":1}x",
        ] {
            assert!(parse_record(bad).is_err(), "{bad:?}");
        }
    }
}
