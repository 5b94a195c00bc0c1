//! What every sink shares: the [`Sink`] contract, the generic [`Outcome`] of one delivery
//! attempt, the [`Limits`] each sink declares, [`AnySink`] (the configured one) and the
//! [`retry::Pacer`] that spaces attempts.
//!
//! A sink takes a batch of stored records (opaque JSON object bytes, never re-encoded), makes
//! **one** delivery attempt and says what became of it. It keeps no queue and never retries on
//! its own: the sender ([`crate::daemon::deliver`]) owns the outbox and the policy, and asks the
//! sink for its [`Limits`] before it cuts a batch.
//!
//! - [`convex`]: `POST <deployment>.convex.site/ingest`, the deployment's HTTP action; its wire
//!   format, the classification of an HTTP answer and its URL rules live there.
//! - [`store`]: the local SQLite store `<data_dir>/sessions.db`, one row per session (always
//!   configured).
//! - [`local`]: appends one line per record to `local.path` and syncs (deprecated; only while
//!   that key is set).
//!
//! Each configured sink drains its own lane of the outbox ([`crate::queue::Lane`]) with its
//! own sender, so one sink failing never holds back another.
//!
//! # Outcomes
//!
//! | outcome                         | meaning                                   | the sender                                   |
//! |---------------------------------|-------------------------------------------|----------------------------------------------|
//! | `Delivered(per-record outcomes)`| the sink processed the batch              | acks `Accepted` ones, dead-letters `Refused` |
//! | `Retry { after }`               | transient: nothing known to be stored     | keeps all, backs off (≥ `after`, clamped)    |
//! | `Rejected`                      | this batch is refused for good            | splits; dead-letters a lone rejected record  |
//! | `Unauthorized`                  | the credentials are refused               | keeps all, pauses `cap`, then tries again    |
//!
//! # Guarantees
//!
//! - At least once: `Delivered` is returned only when the sink processed the batch. Every other
//!   outcome means "nothing known to be stored", so the sender keeps the records; a resend is
//!   harmless because every sink is idempotent per `(sessionId, updatedAt, exportedAt)`.
//! - Never a give-up: transient failures are retried forever with capped backoff.
//! - Never a secret in output: a sink's `Debug`, [`Sink::describe`], errors and outcomes are
//!   free of its credentials (tested per sink).
//! - Every `reason` is one short line, never the request body or a credential.

pub mod convex;
pub mod local;
pub mod retry;
pub mod store;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::Config;

pub use convex::ConvexSink;
pub use local::LocalSink;
pub use retry::{Pacer, RetryPolicy};
pub use store::StoreSink;

/// What became of one batch sent to a sink. Every variant keeps the batch in the outbox except
/// `Delivered`; which records leave it, and when sending resumes, is the sender's policy (see
/// the table above).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The sink processed the batch: one outcome per record, in input order.
    Delivered(Vec<RecordOutcome>),
    /// A transient failure: nothing is known to be stored. Keep the batch and send it again
    /// after the backoff ([`Pacer::observe`]).
    Retry {
        /// Short lowercase description (the status or transport error and a truncated server
        /// message). Never contains the request body or a credential.
        reason: String,
        /// How long the sink asked to wait (Convex: `Retry-After`), not clamped: the pacer
        /// clamps it to its cap.
        after: Option<Duration>,
    },
    /// The sink refused this batch for good (bad request, a record too large…). A
    /// multi-record batch is split and its records sent one by one, so that only the bad record
    /// is dead-lettered.
    Rejected {
        /// As in [`Outcome::Retry`].
        reason: String,
    },
    /// The sink refused the credentials. Keep the queue and pause all sending.
    Unauthorized {
        /// As in [`Outcome::Retry`].
        reason: String,
    },
}

/// The sink's verdict on one record of a delivered batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// The record can leave the outbox: stored, already stored, or older than what the sink
    /// holds (Convex's `inserted`, `updated`, `unchanged`, `stale`; the file's append).
    Accepted,
    /// The sink refused this one record for good (the sender dead-letters it); the rest of its
    /// batch was processed.
    Refused {
        /// Why, one line (for the dead-letter tree and the log), without credentials.
        reason: String,
    },
}

impl Outcome {
    /// `delivered`, `retry`, `rejected` or `unauthorized` (for logs and metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Delivered(_) => "delivered",
            Outcome::Retry { .. } => "retry",
            Outcome::Rejected { .. } => "rejected",
            Outcome::Unauthorized { .. } => "unauthorized",
        }
    }

    /// The reason of a failure; `None` for `Delivered`.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Delivered(_) => None,
            Outcome::Retry { reason, .. }
            | Outcome::Rejected { reason }
            | Outcome::Unauthorized { reason } => Some(reason),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Delivered(records) => {
                let refused = records
                    .iter()
                    .filter(|r| matches!(r, RecordOutcome::Refused { .. }))
                    .count();
                write!(f, "delivered {} records ({refused} refused)", records.len())
            }
            Outcome::Retry {
                reason,
                after: Some(after),
            } => write!(f, "retry: {reason} (retry-after {}s)", after.as_secs()),
            Outcome::Retry { reason, .. } => write!(f, "retry: {reason}"),
            Outcome::Rejected { reason } => write!(f, "rejected: {reason}"),
            Outcome::Unauthorized { reason } => write!(f, "unauthorized: {reason}"),
        }
    }
}

/// How large a batch a sink takes. The sender cuts batches to these; a single record larger
/// than `max_bytes` is still sent alone (the export keeps records under Convex's 1 MiB
/// document limit, see [`crate::export::fit()`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most records per batch (≥ 1).
    pub max_records: usize,
    /// Most bytes of record JSON per batch (the sum of the records' lengths).
    pub max_bytes: usize,
}

impl Limits {
    /// How many of the first records, of the given lengths in bytes, make one batch: at most
    /// `max_records`, at most `max_bytes` in total, and at least one.
    pub fn batch_len(&self, record_lens: impl IntoIterator<Item = usize>) -> usize {
        let mut total = 0usize;
        let mut n = 0usize;
        for len in record_lens.into_iter().take(self.max_records.max(1)) {
            total = total.saturating_add(len);
            if total > self.max_bytes && n > 0 {
                break;
            }
            n += 1;
        }
        n
    }
}

/// A place records are delivered to.
pub trait Sink {
    /// Where it delivers, for logs and `status` (`convex https://x.convex.site`,
    /// `local file /path`); never a credential.
    fn describe(&self) -> String;

    /// The largest batch it takes.
    fn limits(&self) -> Limits;

    /// Makes one delivery attempt of `records` (each one JSON object, at most
    /// [`Sink::limits`]) and says what became of it. Never fails with an error: every failure
    /// is an [`Outcome`].
    fn send(&self, records: &[&[u8]]) -> impl Future<Output = Outcome> + Send;
}

/// Why a sink cannot be built. Sending itself never fails with an error: see [`Outcome`].
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
    /// The local store cannot be opened (or migrated).
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The local file (or its directory) cannot be created, opened or repaired.
    #[error("local file {}: {source}", path.display())]
    Local {
        /// `local.path`.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
}

/// One configured sink.
#[derive(Debug, Clone)]
pub enum AnySink {
    /// The local store (always).
    Store(StoreSink),
    /// Convex (`convex.url` set).
    Convex(ConvexSink),
    /// The deprecated NDJSON file (`local.path` set).
    Local(LocalSink),
}

impl AnySink {
    /// The Convex sink from `[convex]` (`convex.url` must be set).
    ///
    /// # Errors
    /// See [`SinkError`].
    pub fn convex(cfg: &Config) -> Result<AnySink, SinkError> {
        ConvexSink::try_from(&cfg.convex).map(AnySink::Convex)
    }

    /// The local store at `<data_dir>/sessions.db` (created and migrated if needed).
    ///
    /// # Errors
    /// [`SinkError::Store`].
    pub fn store(cfg: &Config) -> Result<AnySink, SinkError> {
        Ok(AnySink::Store(StoreSink::open(&cfg.data_dir)?))
    }

    /// The NDJSON file at `local.path` (its file created if needed).
    ///
    /// # Errors
    /// [`SinkError::Local`].
    pub fn ndjson(cfg: &Config) -> Result<AnySink, SinkError> {
        LocalSink::try_from(&cfg.local).map(AnySink::Local)
    }
}

impl Sink for AnySink {
    fn describe(&self) -> String {
        match self {
            AnySink::Store(s) => s.describe(),
            AnySink::Convex(s) => s.describe(),
            AnySink::Local(s) => s.describe(),
        }
    }

    fn limits(&self) -> Limits {
        match self {
            AnySink::Store(s) => s.limits(),
            AnySink::Convex(s) => s.limits(),
            AnySink::Local(s) => s.limits(),
        }
    }

    async fn send(&self, records: &[&[u8]]) -> Outcome {
        match self {
            AnySink::Store(s) => s.send(records).await,
            AnySink::Convex(s) => s.send(records).await,
            AnySink::Local(s) => s.send(records).await,
        }
    }
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
    use crate::config::{ConvexConfig, LocalConfig, Secret};
    use test_support::fault_server::{sample_record, FaultServer, TOKEN};

    use test_support::bounded;

    #[test]
    fn a_batch_takes_records_up_to_either_limit_and_at_least_one() {
        let l = Limits {
            max_records: 3,
            max_bytes: 10,
        };
        // (record lengths, records in the first batch)
        let table: [(&[usize], usize); 8] = [
            (&[], 0),
            (&[4], 1),
            (&[4, 6], 2), // exactly max_bytes
            (&[4, 7], 1), // one byte over
            (&[11], 1),   // larger than max_bytes: alone
            (&[11, 1], 1),
            (&[1, 1, 1, 1], 3), // max_records
            (&[0, 0, 0, 0, 0], 3),
        ];
        for (lens, expected) in table {
            assert_eq!(l.batch_len(lens.iter().copied()), expected, "{lens:?}");
        }
        let one = Limits {
            max_records: 0,
            max_bytes: 0,
        };
        assert_eq!(one.batch_len([5, 5]), 1, "never less than one record");
    }

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

    #[tokio::test]
    async fn each_sink_is_built_from_its_section_and_described_without_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config {
            local: LocalConfig {
                path: dir.path().join("out/sessions.ndjson"),
            },
            ..Config::default()
        };
        let local = AnySink::ndjson(&cfg).unwrap();
        assert!(matches!(local, AnySink::Local(_)));
        assert_eq!(
            local.describe(),
            format!(
                "local file {}",
                dir.path().join("out/sessions.ndjson").display()
            )
        );
        assert_eq!(
            local.limits(),
            Limits {
                max_records: local::MAX_BATCH_RECORDS,
                max_bytes: local::MAX_BATCH_BYTES
            }
        );
        let r = sample_record("a", "d", 1, 2);
        assert_eq!(local.send(&[&r]).await.kind(), "delivered");

        cfg.convex = ConvexConfig {
            url: "https://happy-otter-123.convex.cloud".into(),
            ingest_token: Secret::new("tok-abc"),
            ..ConvexConfig::default()
        };
        let convex = AnySink::convex(&cfg).unwrap();
        assert_eq!(
            convex.describe(),
            "convex https://happy-otter-123.convex.site"
        );
        assert!(!format!("{convex:?}").contains("tok-abc"));
        // The sender's batches: convex.batch_size records (default 100), within Convex's caps.
        assert_eq!(
            convex.limits(),
            Limits {
                max_records: ConvexConfig::default().batch_size,
                max_bytes: convex::MAX_BATCH_BYTES
            }
        );
        cfg.convex.batch_size = 10_000;
        assert_eq!(
            AnySink::convex(&cfg).unwrap().limits().max_records,
            convex::MAX_BATCH_RECORDS
        );

        cfg.convex.url = "http://happy-otter-123.convex.cloud".into();
        let err = AnySink::convex(&cfg).unwrap_err().to_string();
        assert!(
            err.starts_with("convex url: plain http:// is only allowed to a loopback host"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn any_sink_sends_to_the_fault_server() {
        bounded(async {
            let (_server, h) = FaultServer::start().await;
            let cfg = Config {
                convex: ConvexConfig {
                    url: h.url(),
                    ingest_token: Secret::new(TOKEN),
                    ..ConvexConfig::default()
                },
                ..Config::default()
            };
            let sink = AnySink::convex(&cfg).unwrap();
            let r = sample_record("a", "d", 1, 2);
            assert_eq!(sink.send(&[&r]).await.kind(), "delivered");
            assert_eq!(h.latest().len(), 1);
        })
        .await;
    }
}
