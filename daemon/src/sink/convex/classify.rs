//! The one decision about a Convex delivery attempt: [`classify`] maps an HTTP answer to
//! the ingest action (status, headers, body) to a sink [`Outcome`]; [`transport_error`] maps a
//! request that got no answer. Pure: no IO.
//!
//! | answer                                                   | outcome              | the sender                                  |
//! |----------------------------------------------------------|----------------------|---------------------------------------------|
//! | 2xx `{"results"}`, one result per record                 | `Delivered`          | acks them; dead-letters `conflict` and `rejected` ones |
//! | 401, 403                                                 | `Unauthorized`       | keeps all, pauses `cap`, then tries again   |
//! | 408, 429, 500–599                                        | `Retry{after}`       | keeps, backs off (≥ `Retry-After`, clamped) |
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
//! on a bad answer would drop records the ingest never judged. "Results ≠ records" means a
//! different count, or a result whose `sessionId` differs from its record's.
//!
//! `Retry-After` is read as delay-seconds or an HTTP-date ([`parse_retry_after`]); garbage and
//! negative values are ignored; the pacer clamps it to `convex.max_backoff_secs`.
//!
//! Every `reason` is one short line: a lowercase description, the HTTP status when there was
//! one, and the server's message collapsed to one line and truncated to [`MAX_MESSAGE_CHARS`]
//! characters. It never contains the request body or the token: the token is removed from
//! server messages and per-record errors (Convex validation errors echo values) before
//! truncation.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};

use super::wire::{is_ingest_error, parse_results, IngestError, IngestResult};
use crate::sink::Outcome;

/// Longest server message kept in a `reason` (characters, including a trailing `…`).
pub const MAX_MESSAGE_CHARS: usize = 300;

/// Classifies the answer to one `POST /ingest` (see the table above).
///
/// `status` is the HTTP status, `headers` the response headers (only `Retry-After` and
/// `Location` are read), `body` the whole response body, `sent` the `sessionId` of each record
/// sent (`None` for a record without one), in order, and `secret` the token, removed (raw and
/// JSON-escaped) from every reason.
pub fn classify(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    sent: &[Option<String>],
    secret: Option<&str>,
) -> Outcome {
    let retry = |what: String| Outcome::Retry {
        reason: format!("http {status}: {what}"),
        after: retry_after(headers),
    };
    match status {
        200..=299 => match parse_results(body).and_then(|r| matching(r, sent)) {
            Ok(results) => Outcome::Delivered(
                results
                    .into_iter()
                    .map(|mut r| {
                        r.error = r.error.map(|e| sanitize(&e, secret));
                        r.outcome()
                    })
                    .collect(),
            ),
            Err(why) => retry(format!(
                "unexpected response body, the deployment may be mid-deploy ({})",
                sanitize(&why, secret)
            )),
        },
        401 | 403 => Outcome::Unauthorized {
            reason: format!("http {status}: {}", request_error_message(body, secret)),
        },
        408 | 429 | 500..=599 => retry(request_error_message(body, secret)),
        // Our HTTP action's error body (`{"code","message"}`: BAD_REQUEST, BATCH_TOO_LARGE) is
        // a verdict on this request. A 4xx with any other body came from something else: Convex
        // itself when the deployment has no `/ingest` route (functions not deployed yet, or the
        // URL names another deployment), a proxy, a captive portal. No record is at fault, so
        // keep them all and retry.
        400..=499 if is_ingest_error(body) => Outcome::Rejected {
            reason: format!("http {status}: {}", request_error_message(body, secret)),
        },
        404 => retry(format!(
            "the deployment has no /ingest HTTP action; deploy convex/ with `npx convex deploy` ({})",
            request_error_message(body, secret)
        )),
        400..=499 => retry(format!(
            "not an answer from the ingest HTTP action (a proxy or a wrong url?): {}",
            request_error_message(body, secret)
        )),
        // 1xx, 3xx (redirects are not followed) and anything past 599: a proxy or a wrong URL,
        // not a verdict on the records, so keep them and try again later.
        _ => retry(format!(
            "unexpected status{}: {}",
            location(headers),
            request_error_message(body, secret)
        )),
    }
}

/// `results` when they answer `sent` one for one (count, and `sessionId` where the record has
/// one); else why not.
fn matching(
    results: Vec<IngestResult>,
    sent: &[Option<String>],
) -> Result<Vec<IngestResult>, String> {
    if results.len() != sent.len() {
        return Err(format!(
            "{} results for {} records",
            results.len(),
            sent.len()
        ));
    }
    match results
        .iter()
        .zip(sent)
        .position(|(r, id)| id.as_ref().is_some_and(|id| *id != r.session_id))
    {
        Some(i) => Err(format!("result {} is for another session", i + 1)),
        None => Ok(results),
    }
}

/// The [`Outcome::Retry`] for a request that got no HTTP answer (connect, TLS, timeout,
/// reset, body read). `timeout` is the request timeout, named in the reason when it fired.
pub fn transport_error(error: reqwest::Error, timeout: Duration, secret: Option<&str>) -> Outcome {
    let error = error.without_url();
    let what = if error.is_timeout() {
        format!("request timed out after {}ms", timeout.as_millis())
    } else if error.is_connect() {
        "cannot connect".to_string()
    } else if error.is_body() || error.is_decode() {
        "reading the response failed".to_string()
    } else {
        "transport error".to_string()
    };
    let mut chain = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    Outcome::Retry {
        reason: format!("{what}: {}", sanitize(&chain, secret)),
        after: None,
    }
}

/// Parses a `Retry-After` value: delay-seconds (`"120"`) or an HTTP-date, relative to now.
/// `None` for anything else (garbage, negative or fractional numbers). A date in the past gives
/// zero; a number too large for `u64` saturates. Not clamped: the caller clamps.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    parse_retry_after_at(value, SystemTime::now())
}

/// [`parse_retry_after`] with an explicit "now" for the HTTP-date form.
pub fn parse_retry_after_at(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

fn location(headers: &HeaderMap) -> String {
    headers
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(|l| format!(" (location {})", sanitize(l, None)))
        .unwrap_or_default()
}

/// The message of a request-level error body (`{"code","message"}`), else the body as text.
fn request_error_message(body: &[u8], secret: Option<&str>) -> String {
    if body.is_empty() {
        return "(empty body)".into();
    }
    match serde_json::from_slice::<IngestError>(body) {
        Ok(e) => sanitize(&format!("{}: {}", e.code, e.message), secret),
        Err(_) => sanitize(&String::from_utf8_lossy(body), secret),
    }
}

/// Removes `secret`, collapses whitespace and control characters into single spaces, and
/// truncates to [`MAX_MESSAGE_CHARS`] characters (the last one `…` when cut). The secret is
/// removed before truncation, so no prefix of it can survive the cut.
pub(crate) fn sanitize(text: &str, secret: Option<&str>) -> String {
    let mut text = text.to_string();
    if let Some(secret) = secret.filter(|s| !s.is_empty()) {
        text = text.replace(secret, "[redacted]");
        // The JSON-escaped form, as it appears when a server echoes the arguments.
        if let Ok(quoted) = serde_json::to_string(secret) {
            let escaped = &quoted[1..quoted.len() - 1];
            if escaped != secret {
                text = text.replace(escaped, "[redacted]");
            }
        }
    }
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect();
    let joined = words.join(" ");
    if joined.chars().count() <= MAX_MESSAGE_CHARS {
        return joined;
    }
    let mut out: String = joined.chars().take(MAX_MESSAGE_CHARS - 1).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::RecordOutcome;
    use reqwest::header::HeaderValue;

    /// An answer to a request whose records are not checked against it (no 2xx results).
    fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> Outcome {
        super::classify(status, headers, body, &[], None)
    }

    /// The `sent` argument for records with these session ids.
    fn ids(ids: &[&str]) -> Vec<Option<String>> {
        ids.iter().map(|id| Some(id.to_string())).collect()
    }

    /// The seven records SUCCESS answers (the last has no `sessionId`).
    fn success_ids() -> Vec<Option<String>> {
        let mut sent = ids(&["a", "b", "c", "d", "e", "f"]);
        sent.push(None);
        sent
    }

    fn none() -> HeaderMap {
        HeaderMap::new()
    }

    fn with_retry_after(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        h
    }

    fn retry_after_of(c: &Outcome) -> Option<Duration> {
        match c {
            Outcome::Retry { after, .. } => *after,
            other => panic!("expected retry, got {other:?}"),
        }
    }

    const SUCCESS: &str = r#"{"results":[
        {"sessionId":"a","action":"inserted"},
        {"sessionId":"b","action":"updated"},
        {"sessionId":"c","action":"unchanged"},
        {"sessionId":"d","action":"stale"},
        {"sessionId":"e","action":"conflict","storedDeviceId":"dev-other"},
        {"sessionId":"f","action":"rejected","error":"Value is too large (1.20 MiB > maximum size 1 MiB)"},
        {"action":"rejected","error":"Object is missing the required field `sessionId`"}
    ]}"#;

    #[test]
    fn success_gives_one_outcome_per_record_in_order_with_refusals_named() {
        let got = super::classify(200, &none(), SUCCESS.as_bytes(), &success_ids(), None);
        let refused = |reason: &str| RecordOutcome::Refused {
            reason: reason.into(),
        };
        assert_eq!(
            got,
            Outcome::Delivered(vec![
                RecordOutcome::Accepted,
                RecordOutcome::Accepted,
                RecordOutcome::Accepted,
                RecordOutcome::Accepted,
                refused("conflict: session e is stored under another device id (dev-other)"),
                refused("rejected by the deployment: Value is too large (1.20 MiB > maximum size 1 MiB)"),
                refused("rejected by the deployment: Object is missing the required field `sessionId`"),
            ])
        );
    }

    #[test]
    fn any_2xx_is_parsed_like_200() {
        for status in [200, 201, 299] {
            assert!(
                matches!(super::classify(status, &none(), SUCCESS.as_bytes(), &success_ids(), None), Outcome::Delivered(v) if v.len() == 7),
                "{status}"
            );
        }
    }

    #[test]
    fn results_that_do_not_answer_the_records_one_for_one_are_retried() {
        let body = br#"{"results":[{"sessionId":"a","action":"inserted"},{"sessionId":"b","action":"inserted"}]}"#;
        // (records sent, why the answer does not match; None: it matches)
        let table: [(Vec<Option<String>>, Option<&str>); 5] = [
            (ids(&["a", "b"]), None),
            (vec![None, None], None), // records without a sessionId match any result
            (ids(&["a"]), Some("2 results for 1 records")),
            (ids(&["a", "b", "c"]), Some("2 results for 3 records")),
            (ids(&["b", "a"]), Some("result 1 is for another session")),
        ];
        for (sent, why) in table {
            let got = super::classify(200, &none(), body, &sent, None);
            match why {
                None => assert_eq!(got.kind(), "delivered", "{sent:?}"),
                Some(why) => assert!(
                    matches!(&got, Outcome::Retry { reason, .. } if reason.contains("mid-deploy") && reason.contains(why)),
                    "{sent:?}: {got:?}"
                ),
            }
        }
    }

    #[test]
    fn the_actions_errors_are_rejections_naming_the_code() {
        let body = br#"{"code":"BATCH_TOO_LARGE","message":"At most 500 sessions per request, got 501","limit":500}"#;
        assert_eq!(
            classify(413, &none(), body),
            Outcome::Rejected {
                reason: "http 413: BATCH_TOO_LARGE: At most 500 sessions per request, got 501"
                    .into()
            }
        );
        let body = br#"{"code":"BAD_REQUEST","message":"The body is not a JSON object"}"#;
        assert_eq!(
            classify(400, &none(), body).reason(),
            Some("http 400: BAD_REQUEST: The body is not a JSON object")
        );
    }

    #[test]
    fn a_missing_ingest_route_is_retried_not_dead_lettered() {
        // What Convex answers on the .convex.site origin when http.ts has no /ingest route
        // (functions not deployed yet): no record is at fault.
        match classify(404, &HeaderMap::new(), b"No matching routes found") {
            Outcome::Retry { reason, .. } => {
                assert!(reason.contains("npx convex deploy"), "{reason}");
                assert!(reason.contains("No matching routes found"), "{reason}");
            }
            other => panic!("a missing route must not dead-letter records: {other:?}"),
        }
    }
    #[test]
    fn http_401_and_403_pause() {
        for status in [401, 403] {
            let body = br#"{"code":"UNAUTHORIZED","message":"The bearer token does not match this deployment's INGEST_TOKEN"}"#;
            assert_eq!(
                classify(status, &none(), body),
                Outcome::Unauthorized {
                    reason: format!(
                        "http {status}: UNAUTHORIZED: The bearer token does not match this deployment's INGEST_TOKEN"
                    )
                }
            );
            // Whatever the body: a proxy's 401 pauses too.
            assert_eq!(classify(status, &none(), b"").kind(), "unauthorized");
        }
    }

    #[test]
    fn http_408_429_and_5xx_are_retried() {
        for status in [408, 429, 500, 502, 503, 504, 555, 560, 599] {
            let body = br#"{"code":"Overloaded","message":"busy"}"#;
            let c = classify(status, &with_retry_after("7"), body);
            assert_eq!(
                c,
                Outcome::Retry {
                    reason: format!("http {status}: Overloaded: busy"),
                    after: Some(Duration::from_secs(7))
                }
            );
            assert_eq!(retry_after_of(&classify(status, &none(), b"")), None);
        }
    }

    #[test]
    fn other_4xx_with_the_actions_error_body_are_rejections() {
        for status in [400, 404, 405, 409, 413, 415, 422, 499] {
            let body = br#"{"code":"BAD_REQUEST","message":"nope"}"#;
            let c = classify(status, &with_retry_after("5"), body);
            assert_eq!(
                c,
                Outcome::Rejected {
                    reason: format!("http {status}: BAD_REQUEST: nope")
                }
            );
        }
    }

    #[test]
    fn a_2xx_with_a_body_of_the_wrong_shape_is_retried() {
        let cases: [&[u8]; 9] = [
            b"",
            b"<html>gateway</html>",
            b"{}",
            br#"{"code":"Overloaded","message":"x"}"#,
            br#"{"status":"success","value":[{"sessionId":"a","action":"inserted"}]}"#,
            br#"{"results":{"sessionId":"a"}}"#,
            br#"{"results":[{"sessionId":"a"}]}"#,
            br#"{"results":[{"sessionId":1,"action":"inserted"}]}"#,
            br#"{"results":null}"#,
        ];
        for body in cases {
            for status in [200, 204] {
                let c = classify(status, &none(), body);
                assert!(
                    matches!(&c, Outcome::Retry { reason, .. } if reason.starts_with(&format!("http {status}: unexpected response body"))),
                    "{c:?}"
                );
            }
        }
        // Retry-After is still honoured there.
        let c = classify(200, &with_retry_after("3"), b"");
        assert_eq!(retry_after_of(&c), Some(Duration::from_secs(3)));
    }

    #[test]
    fn unexpected_statuses_are_retried() {
        let mut h = with_retry_after("2");
        h.insert(
            reqwest::header::LOCATION,
            HeaderValue::from_static("https://elsewhere.example/ingest"),
        );
        for status in [100, 301, 302, 307, 308, 600, 999] {
            let c = classify(status, &h, b"");
            assert_eq!(
                c,
                Outcome::Retry {
                    reason: format!("http {status}: unexpected status (location https://elsewhere.example/ingest): (empty body)"),
                    after: Some(Duration::from_secs(2)),
                }
            );
        }
    }

    #[test]
    fn reasons_are_single_line_and_truncated() {
        let long = format!(
            r#"{{"code":"BAD_REQUEST","message":"line one\n\n  line\ttwo {}"}}"#,
            "x".repeat(2000)
        );
        let c = classify(400, &none(), long.as_bytes());
        let reason = c.reason().unwrap();
        assert!(
            reason.starts_with("http 400: BAD_REQUEST: line one line two xxx"),
            "{reason}"
        );
        assert!(!reason.contains('\n') && !reason.contains('\t'));
        let message = reason.strip_prefix("http 400: ").unwrap();
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS);
        assert!(message.ends_with('…'));
        // Multi-byte characters are cut on a char boundary.
        let s = sanitize(&"é".repeat(1000), None);
        assert_eq!(s.chars().count(), MAX_MESSAGE_CHARS);
        assert_eq!(sanitize("  short  ", None), "short");
    }

    #[test]
    fn the_secret_is_redacted_before_truncation() {
        let secret = "tok\"en/with\\quotes-0123456789";
        let escaped = &serde_json::to_string(secret).unwrap();
        let escaped = &escaped[1..escaped.len() - 1];
        // The server echoes the arguments (as Convex validation errors do), JSON-escaped; the
        // token straddles the truncation point.
        let message = format!("{}{{token: \"{escaped}\"}} {secret}", "y".repeat(290));
        let body =
            serde_json::to_vec(&serde_json::json!({"code":"BAD_REQUEST","message": message}))
                .unwrap();
        let c = super::classify(400, &none(), &body, &[], Some(secret));
        let mut text = format!("{c:?} {c}");
        // A per-record error echoing the record (and the token) is redacted too.
        let body = serde_json::to_vec(&serde_json::json!({"results": [
            {"sessionId": "a", "action": "rejected", "error": message}
        ]}))
        .unwrap();
        let c = super::classify(200, &none(), &body, &ids(&["a"]), Some(secret));
        assert!(
            matches!(&c, Outcome::Delivered(r) if matches!(r[..], [RecordOutcome::Refused { .. }])),
            "{c:?}"
        );
        text.push_str(&format!("{c:?}"));
        assert!(!text.contains(secret) && !text.contains(escaped), "{text}");
        assert!(
            !text.contains("tok\\\"en") && !text.contains("tok\"en"),
            "{text}"
        );
        let body = format!(r#"{{"code":"Overloaded","message":"{escaped}"}}"#);
        let c = super::classify(503, &none(), body.as_bytes(), &[], Some(secret));
        assert_eq!(c.reason(), Some("http 503: Overloaded: [redacted]"));
    }

    #[test]
    fn retry_after_seconds() {
        assert_eq!(parse_retry_after("0"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("86400"), Some(Duration::from_secs(86400)));
        // Too large for u64: saturates (the pacer clamps it to its cap).
        assert_eq!(
            parse_retry_after("99999999999999999999999"),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn retry_after_garbage_and_negative_values_are_ignored() {
        for v in [
            "",
            "  ",
            "abc",
            "-5",
            "+5",
            "1.5",
            "7s",
            "0x10",
            "Sun, 99 Foo 2026",
            "١٢",
        ] {
            assert_eq!(parse_retry_after(v), None, "{v:?}");
        }
        assert_eq!(
            retry_after_of(&classify(429, &with_retry_after("abc"), b"")),
            None
        );
        assert_eq!(
            retry_after_of(&classify(503, &with_retry_after("-5"), b"")),
            None
        );
    }

    #[test]
    fn retry_after_http_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        for (value, secs) in [
            ("Sun, 06 Nov 1994 08:49:57 GMT", 20),  // IMF-fixdate
            ("Sunday, 06-Nov-94 08:50:37 GMT", 60), // RFC 850
            ("Sun Nov  6 08:51:37 1994", 120),      // asctime
            ("Sun, 06 Nov 1994 08:49:37 GMT", 0),
            ("Sun, 06 Nov 1994 07:00:00 GMT", 0), // in the past
        ] {
            assert_eq!(
                parse_retry_after_at(value, now),
                Some(Duration::from_secs(secs)),
                "{value}"
            );
        }
        let in_20s = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(20));
        let got = retry_after_of(&classify(503, &with_retry_after(&in_20s), b"")).unwrap();
        assert!(
            got <= Duration::from_secs(20) && got >= Duration::from_secs(18),
            "{got:?}"
        );
    }

    #[test]
    fn display_and_kind() {
        let c = Outcome::Retry {
            reason: "http 429: x".into(),
            after: Some(Duration::from_secs(7)),
        };
        assert_eq!(c.to_string(), "retry: http 429: x (retry-after 7s)");
        assert_eq!(c.kind(), "retry");
        let got = super::classify(200, &none(), SUCCESS.as_bytes(), &success_ids(), None);
        assert_eq!(got.to_string(), "delivered 7 records (3 refused)");
    }

    #[test]
    fn a_4xx_that_is_not_from_convex_is_retried_not_dead_lettered() {
        let html = b"<html><body>400 Bad Request (proxy)</body></html>";
        assert!(matches!(
            classify(400, &HeaderMap::new(), html),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            classify(404, &HeaderMap::new(), b""),
            Outcome::Retry { .. }
        ));
        let ours = br#"{"code":"BAD_REQUEST","message":"The body is not a JSON object"}"#;
        match classify(400, &HeaderMap::new(), ours) {
            Outcome::Rejected { reason } => assert!(reason.contains("BAD_REQUEST"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}
