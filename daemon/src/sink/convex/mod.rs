//! The Convex sink: one `POST /ingest` per batch to the deployment's HTTP action (served on its
//! `.convex.site` origin by `convex/convex/http.ts`), which checks the bearer ingest token and
//! calls the internal upsert mutation. No Convex admin or deploy key is involved.
//!
//! - [`wire`]: the request and response shapes, with the [`wire::Action`] enum.
//! - [`classify`](mod@classify): the one decision about an HTTP answer.
//! - [`url`]: which `convex.url` values are accepted, and the `.convex.cloud` → `.convex.site`
//!   rule.
//! - [`whoami`](mod@whoami): `GET /whoami`, which device the deployment knows the token as.
//! - here: the HTTP client and the batch limits ([`MAX_BATCH_RECORDS`], [`MAX_BATCH_BYTES`]).
//!
//! The token travels only in the `Authorization` header (marked sensitive). The client uses
//! rustls with TLS ≥ 1.2, one pooled connection set, a request timeout
//! (`convex.request_timeout_secs`), a connect timeout (≤ 10 s) and no redirects. Nothing here
//! logs a body, a header or the token; the sink's `Debug`, [`Sink::describe`], errors and
//! outcomes are free of it (tested).

pub mod classify;
pub mod url;
pub mod whoami;
pub mod wire;

use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};

use crate::config::{ConvexConfig, Secret};
use crate::sink::{parse_record, Limits, Outcome, Sink, SinkError};
use classify::{classify, sanitize, transport_error};
use wire::IngestBody;

/// The `User-Agent` sent: `opencode-telemetry/<crate version>`.
pub const USER_AGENT: &str = concat!("opencode-telemetry/", env!("CARGO_PKG_VERSION"));

/// The HTTP action's route, relative to the deployment's HTTP-actions origin.
pub const INGEST_ROUTE: &str = "ingest";

/// Most records one request may carry (`MAX_BATCH` of `convex/convex/http.ts`; more is a 413).
pub const MAX_BATCH_RECORDS: usize = 500;

/// Most bytes of records one request carries (the sum of the records' JSON). Convex takes
/// 16 MiB of arguments per mutation and 20 MiB per HTTP request; 8 MiB keeps one transaction's
/// writes (16 MiB) clear too. A single record larger than this is still sent alone: the
/// daemon's [`crate::export::fit()`] keeps every record under 1 MiB.
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Longest connect timeout (s); the request timeout is used when shorter.
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest response body read (bytes); a longer one is a transient failure.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Sends batches to the `POST /ingest` HTTP action of a Convex deployment. Cheap to clone; the
/// one `reqwest::Client` inside pools connections.
#[derive(Clone)]
pub struct ConvexSink {
    client: reqwest::Client,
    limits: Limits,
    endpoint: ::url::Url,
    origin: String,
    token: Secret,
    request_timeout: Duration,
}

impl fmt::Debug for ConvexSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConvexSink")
            .field("endpoint", &self.origin)
            .field("token", &self.token)
            .field("request_timeout", &self.request_timeout)
            .field("limits", &self.limits)
            .finish()
    }
}

impl TryFrom<&ConvexConfig> for ConvexSink {
    type Error = SinkError;

    /// A sink posting to `<url::site_url(cfg.url)>/ingest` with `cfg.ingest_token`, batches of
    /// at most `cfg.batch_size` (and [`MAX_BATCH_RECORDS`]) records and [`MAX_BATCH_BYTES`], a
    /// request timeout of `cfg.request_timeout_secs` (s) and a connect timeout of at most
    /// [`MAX_CONNECT_TIMEOUT`].
    ///
    /// # Errors
    /// [`SinkError::ConvexUrl`] when the URL is not `https://` (or `http://` to a loopback
    /// host), [`SinkError::MissingToken`] when the token is empty, [`SinkError::Client`] when
    /// the HTTP client cannot be built.
    fn try_from(cfg: &ConvexConfig) -> Result<ConvexSink, SinkError> {
        let timeout = Duration::from_secs(cfg.request_timeout_secs.max(1));
        ConvexSink::with_timeouts(cfg, timeout, timeout.min(MAX_CONNECT_TIMEOUT))
    }
}

impl ConvexSink {
    /// [`ConvexSink::try_from`] with an explicit request timeout and connect timeout (time-compressed
    /// tests use sub-second ones; `convex.request_timeout_secs` is ignored).
    ///
    /// # Errors
    /// As [`ConvexSink::try_from`].
    pub fn with_timeouts(
        cfg: &ConvexConfig,
        request_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<ConvexSink, SinkError> {
        let parsed = url::check(&cfg.url).map_err(|message| SinkError::ConvexUrl { message })?;
        if cfg.ingest_token.is_empty() {
            return Err(SinkError::MissingToken);
        }
        // Credentials in the URL would be sent (and shown); the token goes in a header only.
        let origin = url::display(&url::site_url(&parsed));
        let endpoint =
            url::ingest_endpoint(&parsed).map_err(|message| SinkError::ConvexUrl { message })?;
        let mut builder = reqwest::Client::builder()
            .timeout(request_timeout)
            .connect_timeout(connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .min_tls_version(reqwest::tls::Version::TLS_1_2)
            .user_agent(USER_AGENT);
        if url::is_loopback(&parsed) {
            // Never through an environment proxy (see `url::is_loopback`).
            builder = builder.no_proxy();
        }
        let client = builder.build().map_err(|e| SinkError::Client {
            message: sanitize(&e.to_string(), None),
        })?;
        Ok(ConvexSink {
            client,
            limits: Limits {
                max_records: cfg.batch_size.clamp(1, MAX_BATCH_RECORDS),
                max_bytes: MAX_BATCH_BYTES,
            },
            endpoint,
            origin,
            token: cfg.ingest_token.clone(),
            request_timeout,
        })
    }

    /// The URL posted to: `<HTTP-actions origin>/ingest`.
    pub fn endpoint(&self) -> &::url::Url {
        &self.endpoint
    }
}

impl Sink for ConvexSink {
    /// `convex <HTTP-actions origin>` (no credentials).
    fn describe(&self) -> String {
        format!("convex {}", self.origin)
    }

    /// `convex.batch_size` (at most [`MAX_BATCH_RECORDS`]) records, [`MAX_BATCH_BYTES`].
    fn limits(&self) -> Limits {
        self.limits
    }

    /// Sends `records` (each a JSON object, spliced into the body verbatim) in one
    /// `POST /ingest` and classifies the answer.
    ///
    /// No request is made for an empty batch (`Delivered(vec![])`) or when a record is not a
    /// JSON object (`Rejected`, naming the record's position). A `Delivered` answer whose
    /// results do not match the records one for one (count, or `sessionId` where the record
    /// has one) is turned into `Retry`. Nothing is logged above debug, and never a body, a
    /// header or the token.
    async fn send(&self, records: &[&[u8]]) -> Outcome {
        if records.is_empty() {
            return Outcome::Delivered(Vec::new());
        }
        let n = records.len();
        let mut sessions = Vec::with_capacity(n);
        let mut ids = Vec::with_capacity(n);
        for (i, record) in records.iter().enumerate() {
            match parse_record(record) {
                Ok((raw, id)) => {
                    sessions.push(raw);
                    ids.push(id);
                }
                Err(why) => {
                    return Outcome::Rejected {
                        reason: format!("record {} of {n}: {why}", i + 1),
                    }
                }
            }
        }
        let body = IngestBody { sessions };
        let body = match serde_json::to_vec(&body) {
            Ok(b) => b,
            Err(e) => {
                return Outcome::Rejected {
                    reason: format!("cannot encode the request: {e}"),
                }
            }
        };
        let secret = Some(self.token.expose());
        let mut bearer = match HeaderValue::from_str(&format!("Bearer {}", self.token.expose())) {
            Ok(v) => v,
            Err(_) => {
                // Not a retry: the token cannot change without a reload.
                return Outcome::Unauthorized {
                    reason: "convex.ingest_token contains characters not allowed in an HTTP header"
                        .into(),
                };
            }
        };
        // Keeps it out of hyper's and reqwest's Debug output.
        bearer.set_sensitive(true);
        let sent = self
            .client
            .post(self.endpoint.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(AUTHORIZATION, bearer)
            .body(body)
            .send()
            .await;
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => return transport_error(e, self.request_timeout, secret),
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let mut bytes = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                        return Outcome::Retry {
                            reason: format!(
                                "http {status}: response body over {MAX_RESPONSE_BYTES} bytes"
                            ),
                            after: None,
                        };
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    let Outcome::Retry { reason, .. } =
                        transport_error(e, self.request_timeout, secret)
                    else {
                        unreachable!("transport errors are retries")
                    };
                    return Outcome::Retry {
                        reason: format!("http {status}: {reason}"),
                        after: None,
                    };
                }
            }
        }
        let outcome = classify(status, &headers, &bytes, &ids, secret);
        tracing::debug!(
            status,
            records = n,
            outcome = outcome.kind(),
            "convex ingest answered"
        );
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::RecordOutcome::{self, Accepted};
    use std::future::Future;
    use test_support::fault_server::{sample_record, FaultHandle, FaultServer, Mode, TOKEN};

    /// Every test is bounded in time.
    async fn bounded<F: Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("test took over 10 s")
    }

    fn config(url: &str, token: &str) -> ConvexConfig {
        ConvexConfig {
            url: url.to_string(),
            ingest_token: Secret::new(token),
            ..ConvexConfig::default()
        }
    }

    fn sink(h: &FaultHandle) -> ConvexSink {
        sink_with(h, TOKEN, Duration::from_secs(5))
    }

    fn sink_with(h: &FaultHandle, token: &str, timeout: Duration) -> ConvexSink {
        ConvexSink::with_timeouts(&config(&h.url(), token), timeout, timeout).unwrap()
    }

    fn refused(reason: &str) -> RecordOutcome {
        RecordOutcome::Refused {
            reason: reason.into(),
        }
    }

    /// The actions the fault server's ingest rule took, in order.
    fn actions(h: &FaultHandle) -> Vec<String> {
        h.upserts().iter().map(|u| u.action.to_string()).collect()
    }

    #[tokio::test]
    async fn delivers_a_batch_with_per_item_results_including_conflicts() {
        bounded(async {
            let (_server, h) = FaultServer::start().await;
            let s = sink(&h);
            let a1 = sample_record("a", "dev-1", 100, 1000);
            let b1 = sample_record("b", "dev-1", 100, 1000);
            assert_eq!(
                s.send(&[&a1, &b1]).await,
                Outcome::Delivered(vec![Accepted, Accepted])
            );
            let a2 = sample_record("a", "dev-1", 200, 2000);
            let a_old = sample_record("a", "dev-1", 150, 3000);
            let b_other = sample_record("b", "dev-2", 300, 3000);
            let got = s.send(&[&a2, &a2, &a_old, &b_other]).await;
            assert_eq!(
                got,
                Outcome::Delivered(vec![
                    Accepted,
                    Accepted,
                    Accepted,
                    refused("conflict: session b is stored under another device id (dev-1)"),
                ])
            );
            assert_eq!(
                actions(&h),
                [
                    "inserted",
                    "inserted",
                    "updated",
                    "unchanged",
                    "stale",
                    "conflict"
                ]
            );
            let latest = h.latest();
            assert_eq!(latest["a"]["updatedAt"], 200);
            assert_eq!(latest["b"]["deviceId"], "dev-1");
            assert_eq!(h.upserts().len(), 6);
        })
        .await;
    }

    #[tokio::test]
    async fn the_request_has_the_agreed_wire_format() {
        bounded(async {
            let (_server, h) = FaultServer::start().await;
            let s = sink(&h);
            // Key order, spacing and number forms of the stored bytes are kept.
            let a = br#"{"sessionId":"a", "deviceId":"d","updatedAt":1.50,"exportedAt":2,"z":{"k":[1,2]}}"#;
            let b = sample_record("b", "d", 1, 2);
            assert!(matches!(s.send(&[a, &b]).await, Outcome::Delivered(_)));
            let req = &h.requests()[0];
            assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", "/ingest"));
            assert_eq!(req.content_type.as_deref(), Some("application/json"));
            assert_eq!(
                req.authorization.as_deref(),
                Some(format!("Bearer {TOKEN}").as_str())
            );
            let expected = format!(
                r#"{{"sessions":[{},{}]}}"#,
                std::str::from_utf8(a).unwrap(),
                std::str::from_utf8(&b).unwrap()
            );
            assert_eq!(String::from_utf8(req.body.clone()).unwrap(), expected);
            assert_eq!(s.endpoint().as_str(), format!("{}/ingest", h.url()));
            assert_eq!(s.describe(), format!("convex {}", h.url()));
        })
        .await;
    }

    #[tokio::test]
    async fn empty_batches_and_non_object_records_make_no_request() {
        bounded(async {
            let (_server, h) = FaultServer::start().await;
            let s = sink(&h);
            assert_eq!(s.send(&[]).await, Outcome::Delivered(vec![]));
            let good = sample_record("a", "d", 1, 2);
            for bad in [&b"[]"[..], b"nul", b"{\"a\":1", b"1"] {
                let got = s.send(&[&good, &good, bad]).await;
                assert!(
                    matches!(&got, Outcome::Rejected { reason } if reason.starts_with("record 3 of 3: ")),
                    "{got:?}"
                );
            }
            assert_eq!(h.request_count(), 0);
        })
        .await;
    }

    #[tokio::test]
    async fn http_429_with_retry_after_is_a_retry_with_the_delay() {
        bounded(async {
            let (_server, h) = FaultServer::start().await;
            let s = sink(&h);
            let r = sample_record("a", "d", 1, 2);
            h.script([
                Mode::retry_after(429, "7"),
                Mode::retry_after(
                    503,
                    httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(20)),
                ),
                Mode::retry_after(429, "abc"),
                Mode::retry_after(503, "-5"),
                Mode::retry_after(429, "86400"),
            ]);
            let got = s.send(&[&r]).await;
            assert_eq!(
                got,
                Outcome::Retry {
                    reason: "http 429: TooManyConcurrentRequests: injected 429 by the fault server"
                        .into(),
                    after: Some(Duration::from_secs(7)),
                }
            );
            let Outcome::Retry { after: Some(d), .. } = s.send(&[&r]).await else {
                panic!()
            };
            assert!(
                (Duration::from_secs(18)..=Duration::from_secs(20)).contains(&d),
                "{d:?}"
            );
            for expected in [None, None, Some(Duration::from_secs(86400))] {
                let got = s.send(&[&r]).await;
                assert!(
                    matches!(got, Outcome::Retry { after, .. } if after == expected),
                    "{got:?}"
                );
            }
            assert!(matches!(s.send(&[&r]).await, Outcome::Delivered(_)));
            assert!(h.upserts().len() == 1);
        })
        .await;
    }

    #[tokio::test]
    async fn http_5xx_and_408_are_retries() {
        bounded(async {
            let (_server, h) = FaultServer::start().await;
            let s = sink(&h);
            let r = sample_record("a", "d", 1, 2);
            for status in [500, 502, 503, 504, 408] {
                h.script([Mode::status(status)]);
                let got = s.send(&[&r]).await;
                assert!(
                    matches!(&got, Outcome::Retry { reason, after: None } if reason.starts_with(&format!("http {status}: "))),
                    "{got:?}"
                );
            }
            // 560 is Convex's "function error" status on the function API; an HTTP action
            // never sends it, so it is a server error like any other 5xx.
            h.script([Mode::raw(560, r#"{"results":[{"sessionId":"a","action":"inserted"}]}"#)]);
            assert_eq!(s.send(&[&r]).await.kind(), "retry");
            assert_eq!(s.send(&[&r]).await, Outcome::Delivered(vec![Accepted]));
        })
        .await;
    }

    #[tokio::test]
    async fn the_actions_4xx_errors_are_rejections_other_4xx_are_retries() {
        bounded(async {
            let (_server, h) = FaultServer::start().await;
            let s = sink(&h);
            let r = sample_record("a", "d", 1, 2);
            for status in [400, 413, 422] {
                h.script([Mode::status(status)]);
                let got = s.send(&[&r]).await;
                assert!(
                    matches!(&got, Outcome::Rejected { reason } if reason.starts_with(&format!("http {status}: "))),
                    "{got:?}"
                );
            }
            // The real 413 of too many records.
            let many: Vec<Vec<u8>> = (0..=MAX_BATCH_RECORDS)
                .map(|i| sample_record(&format!("s{i}"), "d", 1, 2))
                .collect();
            let batch: Vec<&[u8]> = many.iter().map(Vec::as_slice).collect();
            let got = s.send(&batch).await;
            assert!(
                matches!(&got, Outcome::Rejected { reason } if reason.starts_with("http 413: BATCH_TOO_LARGE")),
                "{got:?}"
            );
            // A deployment without our http.ts answers its plain-text 404: no record is at
            // fault, so the records stay queued.
            let no_route = ConvexSink::try_from(&config(&format!("{}/elsewhere", h.url()), TOKEN)).unwrap();
            let got = no_route.send(&[&r]).await;
            assert!(
                matches!(&got, Outcome::Retry { reason, .. } if reason.contains("no /ingest HTTP action")),
                "{got:?}"
            );
            // A 4xx that is not the action's JSON error (a proxy page) is not a verdict either.
            h.script([Mode::raw(409, "<html>proxy says no</html>")]);
            assert_eq!(s.send(&[&r]).await.kind(), "retry");
            assert!(h.upserts().is_empty());
        })
        .await;
    }

    #[tokio::test]
    async fn a_rejected_record_is_refused_alone_and_the_rest_of_its_batch_is_stored() {
        bounded(async {
            let (_server, h) = FaultServer::start().await;
            let s = sink(&h);
            h.reject_sessions(["bad"]);
            let records = [
                sample_record("a", "d", 1, 2),
                sample_record("bad", "d", 1, 2),
                sample_record("c", "d", 1, 2),
            ];
            let batch: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
            let got = s.send(&batch).await;
            let Outcome::Delivered(records) = &got else {
                panic!("{got:?}")
            };
            assert!(matches!(records[..], [Accepted, RecordOutcome::Refused { .. }, Accepted]), "{got:?}");
            assert!(
                matches!(&records[1], RecordOutcome::Refused { reason } if reason.starts_with("rejected by the deployment: ArgumentValidationError")),
                "{got:?}"
            );
            assert_eq!(h.latest().keys().collect::<Vec<_>>(), ["a", "c"]);
            // A record the deployment's validator refuses (no deviceId) is refused the same way.
            let got = s.send(&[br#"{"sessionId":"x"}"#]).await;
            assert!(
                matches!(&got, Outcome::Delivered(r) if matches!(r[..], [RecordOutcome::Refused { .. }])),
                "{got:?}"
            );
        })
        .await;
    }

    #[tokio::test]
    async fn a_wrong_token_and_http_401_are_unauthorized() {
        bounded(async {
            let (_server, h) = FaultServer::start().await;
            let r = sample_record("a", "d", 1, 2);
            let wrong = sink_with(&h, "not-the-token", Duration::from_secs(5));
            let got = wrong.send(&[&r]).await;
            assert!(
                matches!(&got, Outcome::Unauthorized { reason } if reason.starts_with("http 401: UNAUTHORIZED: ")),
                "{got:?}"
            );
            let s = sink(&h);
            for mode in [Mode::unauthorized(), Mode::status(401), Mode::status(403)] {
                h.script([mode]);
                assert_eq!(s.send(&[&r]).await.kind(), "unauthorized");
            }
            // The token is fixed on the deployment: delivery resumes with the same sink.
            h.set_token(Some("not-the-token"));
            assert!(matches!(wrong.send(&[&r]).await, Outcome::Delivered(_)));
        })
        .await;
    }

    #[tokio::test]
    async fn a_hung_server_hits_the_request_timeout() {
        bounded(async {
            let (_server, h) = FaultServer::start().await;
            let s = sink_with(&h, TOKEN, Duration::from_millis(300));
            h.set_mode(Mode::Hang).await;
            let started = tokio::time::Instant::now();
            let got = s.send(&[&sample_record("a", "d", 1, 2)]).await;
            let took = started.elapsed();
            assert!(
                matches!(&got, Outcome::Retry { reason, after: None } if reason.starts_with("request timed out after 300ms")),
                "{got:?}"
            );
            assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "{took:?}");
            assert_eq!(h.request_count(), 1);
            // A slow but timely answer is fine.
            h.set_mode(Mode::Delay(Duration::from_millis(50))).await;
            assert!(matches!(s.send(&[&sample_record("a", "d", 1, 2)]).await, Outcome::Delivered(_)));
        })
        .await;
    }

    #[tokio::test]
    async fn refused_and_reset_connections_are_retries_and_the_server_comes_back() {
        bounded(async {
            let (_server, h) = FaultServer::start().await;
            let s = sink(&h);
            let r = sample_record("a", "d", 1, 2);
            assert!(matches!(s.send(&[&r]).await, Outcome::Delivered(_)));
            h.set_mode(Mode::Refuse).await;
            for _ in 0..3 {
                let got = s.send(&[&r]).await;
                assert!(
                    matches!(&got, Outcome::Retry { after: None, .. }),
                    "{got:?}"
                );
            }
            h.set_mode(Mode::Normal).await;
            assert!(matches!(s.send(&[&r]).await, Outcome::Delivered(_)));
            h.script([Mode::Reset]);
            let got = s.send(&[&r]).await;
            assert!(matches!(&got, Outcome::Retry { .. }), "{got:?}");
            assert!(matches!(s.send(&[&r]).await, Outcome::Delivered(_)));
        })
        .await;
    }

    #[tokio::test]
    async fn connection_refused_names_the_cause() {
        bounded(async {
            let (server, h) = FaultServer::start().await;
            let s = sink(&h);
            h.set_mode(Mode::Refuse).await;
            drop(server);
            let got = s.send(&[&sample_record("a", "d", 1, 2)]).await;
            assert!(
                matches!(&got, Outcome::Retry { reason, .. } if reason.starts_with("cannot connect: ") && reason.to_lowercase().contains("refused")),
                "{got:?}"
            );
        })
        .await;
    }

    #[tokio::test]
    async fn answers_that_do_not_match_the_batch_are_retries() {
        bounded(async {
            let (_server, h) = FaultServer::start().await;
            let s = sink(&h);
            let (a, b) = (sample_record("a", "d", 1, 2), sample_record("b", "d", 1, 2));
            h.script([
                Mode::raw(200, r#"{"results":[{"sessionId":"a","action":"inserted"}]}"#),
                Mode::raw(200, r#"{"results":[{"sessionId":"b","action":"inserted"},{"sessionId":"a","action":"inserted"}]}"#),
                Mode::raw(200, "<html>deploying</html>"),
                Mode::raw(200, r#"{"results":null}"#),
                Mode::raw(200, r#"{"status":"success","value":[]}"#),
            ]);
            for why in ["1 results for 2 records", "result 1 is for another session", "not json", "wrong shape", "no results field"] {
                let got = s.send(&[&a, &b]).await;
                assert!(
                    matches!(&got, Outcome::Retry { reason, .. } if reason.contains("mid-deploy") && reason.contains(why)),
                    "{why}: {got:?}"
                );
            }
        })
        .await;
    }

    #[test]
    fn plain_http_is_refused_unless_loopback_and_a_token_is_required() {
        for url in [
            "http://example.com",
            "http://10.0.0.1:3210",
            "ftp://x.convex.cloud",
            "not a url",
        ] {
            let err = ConvexSink::try_from(&config(url, "t")).unwrap_err();
            assert!(matches!(err, SinkError::ConvexUrl { .. }), "{url}: {err}");
        }
        let err = ConvexSink::try_from(&config("http://example.com", "t"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("loopback"), "{err}");
        assert!(matches!(
            ConvexSink::try_from(&config("https://a.convex.cloud", "")),
            Err(SinkError::MissingToken)
        ));
        // The function-API URL `npx convex deploy` prints names the deployment; HTTP actions
        // live on its `.convex.site` twin.
        let s = ConvexSink::try_from(&config("https://user:pw@a.convex.cloud/", "t")).unwrap();
        assert_eq!(s.describe(), "convex https://a.convex.site");
        assert_eq!(s.endpoint().as_str(), "https://a.convex.site/ingest");
        let s = ConvexSink::try_from(&config("https://Happy-Otter-1.EU-West-1.Convex.Cloud", "t"))
            .unwrap();
        assert_eq!(
            s.endpoint().as_str(),
            "https://happy-otter-1.eu-west-1.convex.site/ingest"
        );
        let s = ConvexSink::try_from(&config("https://a.convex.site", "t")).unwrap();
        assert_eq!(s.endpoint().as_str(), "https://a.convex.site/ingest");
        let s =
            ConvexSink::try_from(&config("https://telemetry.example.com/convex/", "t")).unwrap();
        assert_eq!(
            s.endpoint().as_str(),
            "https://telemetry.example.com/convex/ingest"
        );
        let s = ConvexSink::try_from(&config("http://127.0.0.1:3211/prefix", "t")).unwrap();
        assert_eq!(s.endpoint().as_str(), "http://127.0.0.1:3211/prefix/ingest");
        assert!(ConvexSink::try_from(&config("http://[::1]:3211", "t")).is_ok());
        assert!(ConvexSink::try_from(&config("http://localhost:3211", "t")).is_ok());
    }

    #[tokio::test]
    async fn the_token_never_appears_in_any_outcome_error_or_debug_output() {
        bounded(async {
            let token = "tok-\"sekrit\"-4f9a2c71d3";
            let escaped = r#"tok-\"sekrit\"-4f9a2c71d3"#;
            let (server, h) = FaultServer::start().await;
            h.set_token(Some("the-right-one"));
            let s = sink_with(&h, token, Duration::from_millis(300));
            let r = sample_record("a", "d", 1, 2);
            let echo = format!("Invalid token {token} / {escaped}");
            let mut outputs = vec![format!("{s:?}"), s.describe()];
            let modes = [
                Mode::Normal, // wrong token → UNAUTHORIZED
                Mode::ingest_error(400, "BAD_REQUEST", &echo),
                Mode::ingest_error(401, "UNAUTHORIZED", &echo),
                Mode::raw(401, echo.clone()),
                Mode::raw(
                    503,
                    serde_json::json!({"code": "X", "message": echo}).to_string(),
                ),
                Mode::raw(400, echo.clone()),
                Mode::raw(200, echo.clone()),
                Mode::raw(302, echo.clone()),
                Mode::Reset,
                Mode::Hang,
            ];
            for mode in modes {
                h.set_mode(mode).await;
                let got = s.send(&[&r]).await;
                assert_ne!(got.kind(), "delivered");
                outputs.push(format!("{got:?}"));
                outputs.push(got.to_string());
            }
            // A per-record rejection whose error echoes the token.
            h.set_mode(Mode::raw(
                200,
                serde_json::json!({"results": [{"sessionId": "a", "action": "rejected", "error": echo}]})
                    .to_string(),
            ))
            .await;
            let got = s.send(&[&r]).await;
            assert!(
                matches!(&got, Outcome::Delivered(r) if matches!(r[..], [RecordOutcome::Refused { .. }])),
                "{got:?}"
            );
            outputs.push(format!("{got:?} {got}"));
            // The token went in the header of every request; only the client's redaction keeps
            // the server's echoes of it out.
            assert!(h
                .requests()
                .iter()
                .all(|q| q.authorization.as_deref() == Some(&format!("Bearer {token}"))));
            h.set_mode(Mode::Refuse).await;
            drop(server);
            let got = s.send(&[&r]).await;
            outputs.push(format!("{got:?} {got}"));
            let not_object = s.send(&[b"[]"]).await;
            outputs.push(format!("{not_object:?} {not_object}"));
            for cfg_err in [
                ConvexSink::try_from(&config("http://example.com", token)).unwrap_err(),
                ConvexSink::try_from(&config("https://x", "")).unwrap_err(),
            ] {
                outputs.push(format!("{cfg_err:?} {cfg_err}"));
            }
            for out in &outputs {
                for needle in [token, escaped, "sekrit"] {
                    assert!(!out.contains(needle), "token leaked: {out}");
                }
            }
            assert!(outputs.iter().any(|o| o.contains("[redacted]")));
        })
        .await;
    }

    #[tokio::test]
    async fn a_sender_loop_with_the_pacer_spaces_its_retries() {
        use crate::sink::retry::{Pacer, RetryPolicy};
        bounded(async {
            let (_server, h) = FaultServer::start().await;
            let s = sink(&h);
            let r = sample_record("a", "d", 1, 2);
            h.script([
                Mode::status(503),
                Mode::status(503),
                Mode::retry_after(429, "0"),
                Mode::status(500),
            ]);
            let mut pacer = Pacer::new(RetryPolicy::new(
                Duration::from_millis(20),
                Duration::from_millis(80),
            ));
            let mut waits = Vec::new();
            let delivered = loop {
                if let Some(at) = pacer.ready_at() {
                    tokio::time::sleep_until(at).await;
                }
                let outcome = s.send(&[&r]).await;
                let wait = pacer.observe(&outcome);
                if let Outcome::Delivered(items) = outcome {
                    break items;
                }
                waits.push(wait);
                assert!(waits.len() < 10, "never delivered");
            };
            assert_eq!(delivered, vec![Accepted]);
            let gaps = h.request_gaps();
            assert_eq!(gaps.len(), 4);
            for (gap, wait) in gaps.iter().zip(&waits) {
                assert!(gap >= wait, "{gap:?} < {wait:?}");
                assert!(*wait <= Duration::from_millis(80));
            }
            assert_eq!(h.latest().len(), 1);
        })
        .await;
    }
}
