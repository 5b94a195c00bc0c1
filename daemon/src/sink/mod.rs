//! Delivery of outbox records to Convex or to a local NDJSON file.
//!
//! The sink layer takes a batch of stored records (opaque JSON object bytes, never re-encoded),
//! makes **one** delivery attempt and says what became of it as a [`Classified`]. It keeps no
//! queue and never retries on its own: the sender owns the outbox and the policy, pacing itself
//! with the one shared [`retry::Pacer`].
//!
//! - [`AnySink`]: enum dispatch over the two sinks, chosen by [`AnySink::from_config`]: Convex
//!   when `convex.url` is set, else the local file.
//! - [`ConvexSink`]: `POST <HTTP-actions origin>/ingest`, the deployment's HTTP action
//!   (`convex/convex/http.ts`), which checks the bearer ingest token and calls the internal
//!   upsert mutation. No Convex admin or deploy key is involved.
//! - [`LocalSink`]: appends one line per record to `local.path` and syncs (see [`local`] for the
//!   torn-tail repair).
//! - [`classify()`]: the one decision about an HTTP answer; [`retry`]: backoff and the gate.
//!
//! # Wire format (Convex)
//!
//! ```text
//! POST https://<name>.convex.site/ingest          (derived from convex.url; plain http://
//! Content-Type: application/json                   only to a loopback host)
//! Authorization: Bearer <convex.ingest_token>
//! User-Agent: opencode-telemetry/<CARGO_PKG_VERSION>
//!
//! {"sessions":[<record>, <record>, …]}             1..=500 records, ≤ 8 MiB of records
//!
//! 200 {"results":[{"sessionId":"…","action":"inserted"},
//!                 {"sessionId":"…","action":"conflict","storedDeviceId":"…"},
//!                 {"sessionId":"…","action":"rejected","error":"…"}, …]}
//! 400 {"code":"BAD_REQUEST","message":"…"}      413 {"code":"BATCH_TOO_LARGE",…}
//! 401 {"code":"UNAUTHORIZED","message":"…"}     500 {"code":"INTERNAL",…}
//! ```
//!
//! Each `<record>` is the stored bytes spliced in verbatim (`serde_json::value::RawValue`),
//! after checking that it is one JSON object. `results` has one entry per record, in input
//! order; `action` is `inserted`, `updated`, `unchanged`, `stale` (an older
//! `(updatedAt, exportedAt)` than the stored one: ignored), `conflict` (the session is stored
//! under another `deviceId`) or `rejected` (the schema or a document limit refused this record;
//! the rest of the batch was processed). The token travels only in the `Authorization` header
//! (marked sensitive). The client uses rustls with TLS ≥ 1.2, one pooled connection set, a
//! request timeout (`convex.request_timeout_secs`), a connect timeout (≤ 10 s) and no
//! redirects.
//!
//! # Classification
//!
//! | answer                                                   | outcome              | the sender                                  |
//! |----------------------------------------------------------|----------------------|---------------------------------------------|
//! | 2xx `{"results"}`, one result per record                 | `Delivered(results)` | removes them; dead-letters `conflict` and `rejected` ones |
//! | 401, 403                                                 | `Unauthorized`       | keeps all, pauses `cap`, then tries again   |
//! | 408, 429, 500–599                                        | `Retry{retry_after}` | keeps, backs off (≥ `Retry-After`, clamped) |
//! | other 4xx with the action's `{"code","message"}` body (400, 413) | `Rejected`   | splits; dead-letters a lone rejected record |
//! | 404 without it (no `/ingest` route: functions not deployed) | `Retry`           | keeps, backs off                            |
//! | other 4xx without it (a proxy, a captive portal)         | `Retry`              | keeps, backs off                            |
//! | 2xx body not JSON, of another shape, or results ≠ records | `Retry`             | keeps, backs off (see below)                |
//! | 1xx, 3xx (redirects are not followed), ≥ 600             | `Retry`              | keeps, backs off: a proxy or a wrong URL    |
//! | no answer: connect, TLS, timeout, reset, body read       | `Retry`              | keeps, backs off                            |
//! | a record that is not a JSON object (nothing is sent)     | `Rejected`           | splits; dead-letters a lone rejected record |
//!
//! A 2xx answer of the wrong shape is a `Retry`, not a `Rejected`: the deployment may be
//! mid-deploy or behind a misbehaving proxy, nothing is known to be stored, and dead-lettering
//! on a bad answer would drop records the ingest never judged.
//!
//! Local file: `Delivered` with `appended` per record after `sync_data`; `Retry` on any IO
//! error; `Rejected` for a record that is not a JSON object.
//!
//! `Retry-After` is read as delay-seconds or an HTTP-date ([`parse_retry_after`]); garbage and
//! negative values are ignored; the pacer clamps it to `convex.max_backoff_secs`.
//!
//! Every `reason` is one short line: a lowercase description, the HTTP status when there was
//! one, and the server's message collapsed to one line and truncated to
//! [`classify::MAX_MESSAGE_CHARS`] characters. It never contains the request body or the
//! token: the token is removed from server messages and per-record errors (Convex validation
//! errors echo values) before truncation. Nothing in this module logs a body, a header or the token.
//!
//! # Guarantees
//!
//! - At least once: `Delivered` is returned only when the sink processed the batch (Convex
//!   answered with matching results; the local file was synced). Every other outcome means
//!   "nothing known to be stored", so the sender keeps the records; a resend is harmless because
//!   the ingest is idempotent and monotonic.
//! - Never a give-up: transient failures are retried forever with capped backoff.
//! - Never a secret in output: [`ConvexSink`]'s `Debug`, [`AnySink::describe`], errors and
//!   outcomes are free of the token (tested).

pub use convex::classify;
pub mod convex;
pub mod local;
pub mod retry;

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::Config;

pub use convex::classify::{
    classify, parse_retry_after, parse_retry_after_at, Classified, ItemResult,
};
pub use convex::ConvexSink;
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

/// The configured sink.
#[derive(Debug, Clone)]
pub enum AnySink {
    /// Convex (`convex.url` set).
    Convex(ConvexSink),
    /// The local NDJSON file (`convex.url` empty).
    Local(LocalSink),
}

impl AnySink {
    /// Builds the sink the configuration selects: [`ConvexSink`] when `convex.url` is set,
    /// else [`LocalSink`] on `local.path` (created if needed).
    ///
    /// # Errors
    /// See [`SinkError`].
    pub fn from_config(cfg: &Config) -> Result<AnySink, SinkError> {
        if cfg.uses_convex() {
            ConvexSink::new(&cfg.convex).map(AnySink::Convex)
        } else {
            LocalSink::open(cfg.local.path.clone()).map(AnySink::Local)
        }
    }

    /// `convex https://x.convex.cloud` or `local file /path` (never a secret).
    pub fn describe(&self) -> String {
        match self {
            AnySink::Convex(s) => s.describe(),
            AnySink::Local(s) => s.describe(),
        }
    }

    /// Makes one delivery attempt of `records` (each one JSON object) and classifies it.
    pub async fn send(&self, records: &[&[u8]]) -> Classified {
        match self {
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
pub(crate) use test_support::fault_server;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConvexConfig, LocalConfig, Secret};
    use fault_server::{sample_record, FaultServer, Mode, TOKEN};
    use serde_json::{json, Value};
    use std::time::Duration;

    async fn bounded<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("test took over 10 s")
    }

    /// POSTs `body` to `<url>/ingest` with `Authorization: Bearer <token>` when a token is
    /// given; returns the status, the body (JSON, or the text as a JSON string) and
    /// `Retry-After`.
    async fn post(url: &str, token: Option<&str>, body: &str) -> (u16, Value, Option<String>) {
        let client = reqwest::Client::new();
        let mut req = client
            .post(format!("{url}/ingest"))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
            retry_after,
        )
    }

    fn ingest_body(sessions: &[Vec<u8>]) -> String {
        let sessions: Vec<Value> = sessions
            .iter()
            .map(|s| serde_json::from_slice(s).unwrap())
            .collect();
        json!({ "sessions": sessions }).to_string()
    }

    const AUTH: Option<&str> = Some(TOKEN);

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
    async fn from_config_picks_the_sink_and_describes_it_without_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config {
            local: LocalConfig {
                path: dir.path().join("out/sessions.ndjson"),
            },
            ..Config::default()
        };
        let local = AnySink::from_config(&cfg).unwrap();
        assert!(matches!(local, AnySink::Local(_)));
        assert_eq!(
            local.describe(),
            format!(
                "local file {}",
                dir.path().join("out/sessions.ndjson").display()
            )
        );
        let r = sample_record("a", "d", 1, 2);
        assert_eq!(local.send(&[&r]).await.kind(), "delivered");

        cfg.convex = ConvexConfig {
            url: "https://happy-otter-123.convex.cloud".into(),
            ingest_token: Secret::new("tok-abc"),
            ..ConvexConfig::default()
        };
        let convex = AnySink::from_config(&cfg).unwrap();
        assert_eq!(
            convex.describe(),
            "convex https://happy-otter-123.convex.site"
        );
        assert!(!format!("{convex:?}").contains("tok-abc"));

        cfg.convex.url = "http://happy-otter-123.convex.cloud".into();
        let err = AnySink::from_config(&cfg).unwrap_err().to_string();
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
            let sink = AnySink::from_config(&cfg).unwrap();
            let r = sample_record("a", "d", 1, 2);
            assert_eq!(sink.send(&[&r]).await.kind(), "delivered");
            assert_eq!(h.latest().len(), 1);
        })
        .await;
    }

    // ---- the fault server itself -------------------------------------------------------------

    #[tokio::test]
    async fn fault_server_applies_the_monotonic_upsert_rule() {
        bounded(async {
            let (_server, h) = FaultServer::start().await;
            let rec = |u, e, dev: &str| sample_record("s", dev, u, e);
            let batches = [
                (vec![rec(10, 100, "d")], vec!["inserted"]),
                (vec![rec(10, 100, "d")], vec!["unchanged"]),
                (vec![rec(10, 200, "d")], vec!["updated"]),
                (
                    vec![rec(10, 150, "d"), rec(9, 999, "d")],
                    vec!["stale", "stale"],
                ),
                (
                    vec![rec(11, 1, "d"), rec(12, 1, "x")],
                    vec!["updated", "conflict"],
                ),
            ];
            for (records, actions) in batches {
                let (status, body, _) = post(&h.url(), AUTH, &ingest_body(&records)).await;
                assert_eq!(status, 200);
                let got: Vec<&str> = body["results"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v["action"].as_str().unwrap())
                    .collect();
                assert_eq!(got, actions);
            }
            let latest = h.latest();
            assert_eq!(
                (
                    latest["s"]["updatedAt"].as_i64(),
                    latest["s"]["exportedAt"].as_i64()
                ),
                (Some(11), Some(1))
            );
            let upserts = h.upserts();
            assert_eq!(upserts.len(), 7);
            assert_eq!(upserts[6].action, "conflict");
            assert_eq!(upserts[6].device_id, "x");
            assert_eq!(
                (upserts[3].updated_at, upserts[3].exported_at),
                (10.0, 150.0)
            );
            assert!(upserts.windows(2).all(|w| w[0].at <= w[1].at));
            assert_eq!(h.request_count(), 5);
            assert_eq!(h.requests()[4].session_ids, ["s", "s"]);
            assert_eq!(h.requests()[4].status, Some(200));
        })
        .await;
    }

    #[tokio::test]
    async fn fault_server_checks_requests_like_the_ingest_action() {
        bounded(async {
            let (_server, h) = FaultServer::start().await;
            let ok = ingest_body(&[sample_record("a", "d", 1, 2)]);
            let url = h.url();
            let (s, b, _) = post(&url, None, &ok).await;
            assert_eq!((s, b["code"].as_str()), (401, Some("UNAUTHORIZED")));
            let (s, b, _) = post(&url, Some("wrong"), &ok).await;
            assert_eq!((s, b["code"].as_str()), (401, Some("UNAUTHORIZED")));
            let (s, b, _) = post(&url, AUTH, "{not json").await;
            assert_eq!((s, b["code"].as_str()), (400, Some("BAD_REQUEST")));
            let (s, b, _) = post(&url, AUTH, r#"{"sessions":[]}"#).await;
            assert_eq!((s, b["code"].as_str()), (400, Some("BAD_REQUEST")));
            let many: Vec<Vec<u8>> = (0..=fault_server::MAX_BATCH)
                .map(|i| sample_record(&format!("s{i}"), "d", 1, 2))
                .collect();
            let (s, b, _) = post(&url, AUTH, &ingest_body(&many)).await;
            assert_eq!((s, b["code"].as_str()), (413, Some("BATCH_TOO_LARGE")));
            // No such route: Convex's plain-text 404.
            let resp = reqwest::Client::new()
                .post(format!("{url}/api/mutation"))
                .body(ok.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 404);
            assert_eq!(resp.text().await.unwrap(), "No matching routes found");
            assert!(
                h.upserts().is_empty(),
                "nothing written by refused requests"
            );
            // An invalid record is rejected alone; the valid one is stored.
            let (s, b, _) = post(
                &url,
                AUTH,
                &ingest_body(&[
                    b"{\"sessionId\":\"x\"}".to_vec(),
                    sample_record("a", "d", 1, 2),
                ]),
            )
            .await;
            assert_eq!(s, 200);
            assert_eq!(b["results"][0]["action"], "rejected");
            assert_eq!(b["results"][0]["sessionId"], "x");
            assert!(b["results"][0]["error"]
                .as_str()
                .unwrap()
                .contains("ArgumentValidationError"));
            assert_eq!(b["results"][1]["action"], "inserted");
            h.set_token(None);
            let (s, b, _) = post(&url, None, &ingest_body(&[sample_record("b", "d", 1, 2)])).await;
            assert_eq!(
                (s, b["results"][0]["action"].as_str()),
                (200, Some("inserted"))
            );
            assert_eq!(h.latest().len(), 2);
        })
        .await;
    }

    #[tokio::test]
    async fn fault_server_scripts_and_modes() {
        bounded(async {
            let (_server, h) = FaultServer::start().await;
            let url = h.url();
            let ok = ingest_body(&[sample_record("a", "d", 1, 2)]);
            h.script([
                Mode::retry_after(429, "7"),
                Mode::retry_after(503, "Sun, 06 Nov 2094 08:49:37 GMT"),
                Mode::retry_after(503, "abc"),
                Mode::unauthorized(),
                Mode::ingest_error(400, "BAD_REQUEST", "boom"),
            ]);
            let (s, b, ra) = post(&url, AUTH, &ok).await;
            assert_eq!(
                (s, b["code"].as_str(), ra.as_deref()),
                (429, Some("TooManyConcurrentRequests"), Some("7"))
            );
            let (s, _, ra) = post(&url, AUTH, &ok).await;
            assert_eq!(
                (s, ra.as_deref()),
                (503, Some("Sun, 06 Nov 2094 08:49:37 GMT"))
            );
            let (_, _, ra) = post(&url, AUTH, &ok).await;
            assert_eq!(ra.as_deref(), Some("abc"));
            let (s, b, _) = post(&url, AUTH, &ok).await;
            assert_eq!((s, b["code"].as_str()), (401, Some("UNAUTHORIZED")));
            let (s, b, _) = post(&url, AUTH, &ok).await;
            assert_eq!(
                (s, b),
                (400, json!({"code": "BAD_REQUEST", "message": "boom"}))
            );
            // The script is used up: back to the standing mode.
            let (_, b, _) = post(&url, AUTH, &ok).await;
            assert_eq!(b["results"][0]["action"], "inserted");
            h.set_mode(Mode::status(502)).await;
            assert_eq!(post(&url, AUTH, &ok).await.0, 502);
            assert_eq!(post(&url, AUTH, &ok).await.0, 502);
            h.reject_sessions(["a"]);
            h.set_mode(Mode::Normal).await;
            let (_, b, _) = post(&url, AUTH, &ok).await;
            assert_eq!(b["results"][0]["action"], "rejected");
            h.clear_rejections();
            assert_eq!(
                post(&url, AUTH, &ok).await.1["results"][0]["action"],
                "unchanged"
            );
            let modes: Vec<String> = h.requests().iter().map(|r| r.mode.clone()).collect();
            assert_eq!(&modes[..3], ["status 429", "status 503", "status 503"]);
            assert_eq!(h.request_gaps().len(), h.request_count() - 1);
        })
        .await;
    }

    #[tokio::test]
    async fn fault_server_delays_hangs_resets_refuses_and_comes_back_on_the_same_port() {
        bounded(async {
            let (server, h) = FaultServer::start().await;
            let url = h.url();
            let addr = h.addr();
            let ok = ingest_body(&[sample_record("a", "d", 1, 2)]);
            let client = reqwest::Client::builder()
                .timeout(Duration::from_millis(300))
                .build()
                .unwrap();
            let send = || {
                client
                    .post(format!("{url}/ingest"))
                    .header("content-type", "application/json")
                    .header("authorization", format!("Bearer {TOKEN}"))
                    .body(ok.clone())
                    .send()
            };
            h.set_mode(Mode::Delay(Duration::from_millis(100))).await;
            let started = tokio::time::Instant::now();
            assert_eq!(send().await.unwrap().status(), 200);
            assert!(started.elapsed() >= Duration::from_millis(100));
            h.set_mode(Mode::Hang).await;
            assert!(send().await.unwrap_err().is_timeout());
            h.set_mode(Mode::Reset).await;
            assert!(send().await.is_err());
            h.set_mode(Mode::Refuse).await;
            let refused = tokio::net::TcpStream::connect(addr).await.unwrap_err();
            assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
            h.set_mode(Mode::Normal).await;
            assert_eq!(h.addr(), addr);
            assert_eq!(send().await.unwrap().status(), 200);
            let statuses: Vec<Option<u16>> = h.requests().iter().map(|r| r.status).collect();
            assert_eq!(statuses, [Some(200), None, None, Some(200)]);
            // Dropping the server stops it; the handle stays readable.
            drop(server);
            let mut stopped = false;
            for _ in 0..200 {
                if tokio::net::TcpStream::connect(addr).await.is_err() {
                    stopped = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(stopped, "the server still accepts after being dropped");
            assert_eq!(h.request_count(), 4);
        })
        .await;
    }
}
