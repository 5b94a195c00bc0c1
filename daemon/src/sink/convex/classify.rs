//! The one decision about a delivery attempt: [`classify`] maps an HTTP answer (status,
//! headers, body) to a [`Classified`] outcome; transport failures map to
//! [`Classified::Retry`] as well. The table is in the [`crate::sink`] docs.

use std::fmt;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest server message kept in a `reason` (characters, including a trailing `…`).
pub const MAX_MESSAGE_CHARS: usize = 300;

/// What became of one batch sent to a sink. Every variant keeps the batch in the outbox except
/// `Delivered`; which records leave it, and when sending resumes, is the caller's policy (see
/// the table in [`crate::sink`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Classified {
    /// The sink stored the batch. One result per record, in input order. Results with
    /// [`ItemResult::is_conflict`] are per-record rejections (dead-letter just those); every
    /// other result (including `stale` and `unchanged`) means the record can leave the outbox.
    Delivered(Vec<ItemResult>),
    /// A transient failure: nothing is known to be stored. Keep the batch and send it again
    /// after the backoff ([`crate::sink::retry::Pacer::on_failure`]).
    Retry {
        /// Short lowercase description: the status or transport error and a truncated server
        /// message. Never contains the request body or the token.
        reason: String,
        /// The server's `Retry-After`, parsed (not clamped: the pacer clamps it to its cap).
        retry_after: Option<Duration>,
    },
    /// The sink refused this batch for good (bad request, argument or schema validation,
    /// a record too large…). A multi-record batch should be split and its records sent one by
    /// one, so that only the bad record is dead-lettered.
    Rejected {
        /// As in [`Classified::Retry`].
        reason: String,
    },
    /// The sink refused the credentials. Keep the queue and pause all sending
    /// ([`crate::sink::retry::Pacer::pause_unauthorized`]).
    Unauthorized {
        /// As in [`Classified::Retry`].
        reason: String,
    },
}

impl Classified {
    /// `delivered`, `retry`, `rejected` or `unauthorized` (for logs and metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            Classified::Delivered(_) => "delivered",
            Classified::Retry { .. } => "retry",
            Classified::Rejected { .. } => "rejected",
            Classified::Unauthorized { .. } => "unauthorized",
        }
    }

    /// The reason of a failure; `None` for `Delivered`.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Classified::Delivered(_) => None,
            Classified::Retry { reason, .. }
            | Classified::Rejected { reason }
            | Classified::Unauthorized { reason } => Some(reason),
        }
    }
}

impl fmt::Display for Classified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Classified::Delivered(items) => {
                let refused = items.iter().filter(|i| i.is_refused()).count();
                write!(f, "delivered {} records ({refused} refused)", items.len())
            }
            Classified::Retry {
                reason,
                retry_after: Some(after),
            } => write!(f, "retry: {reason} (retry-after {}s)", after.as_secs()),
            Classified::Retry { reason, .. } => write!(f, "retry: {reason}"),
            Classified::Rejected { reason } => write!(f, "rejected: {reason}"),
            Classified::Unauthorized { reason } => write!(f, "unauthorized: {reason}"),
        }
    }
}

/// The sink's verdict on one record of a delivered batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemResult {
    /// The record's `sessionId` (empty when the record has none).
    #[serde(default)]
    pub session_id: String,
    /// Convex: `inserted`, `updated`, `unchanged`, `stale`, `conflict` or `rejected`; local
    /// file: `appended`. Unknown actions from a newer deployment are kept verbatim and count as
    /// delivered.
    pub action: String,
    /// With `conflict`: the `deviceId` already stored for this session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_device_id: Option<String>,
    /// With `rejected`: why the deployment refused the record (schema validation, a document
    /// limit), sanitised and without the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ItemResult {
    /// An accepted result: `action` and nothing else.
    pub fn new(session_id: impl Into<String>, action: impl Into<String>) -> ItemResult {
        ItemResult {
            session_id: session_id.into(),
            action: action.into(),
            stored_device_id: None,
            error: None,
        }
    }

    /// True for `conflict`: the session is stored under another device, so this record was not
    /// written and will never be.
    pub fn is_conflict(&self) -> bool {
        self.action == "conflict"
    }

    /// True for `conflict` and `rejected`: the deployment refused this one record for good
    /// (the sender dead-letters it); the rest of its batch was processed.
    pub fn is_refused(&self) -> bool {
        self.is_conflict() || self.action == "rejected"
    }

    /// Why a refused record was refused (one line, for the dead-letter tree and the log);
    /// `None` for accepted ones.
    pub fn refusal(&self) -> Option<String> {
        match self.action.as_str() {
            "conflict" => Some(format!(
                "conflict: session {} is stored under another device id ({})",
                self.session_id,
                self.stored_device_id.as_deref().unwrap_or("?")
            )),
            "rejected" => Some(format!(
                "rejected by the deployment: {}",
                self.error.as_deref().unwrap_or("(no reason given)")
            )),
            _ => None,
        }
    }
}

/// Classifies the answer to one `POST /ingest` (see the table in [`crate::sink`]).
///
/// `status` is the HTTP status, `headers` the response headers (only `Retry-After` is read),
/// `body` the whole response body. Pure: no IO; the server message kept in a reason is
/// sanitised (control characters collapsed) and truncated to [`MAX_MESSAGE_CHARS`].
pub fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> Classified {
    classify_redacting(status, headers, body, None)
}

/// [`classify`], also removing `secret` (raw and JSON-escaped) from every reason. Convex
/// validation errors echo argument values, so a server message can contain the token.
pub(crate) fn classify_redacting(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    secret: Option<&str>,
) -> Classified {
    let retry = |what: String| Classified::Retry {
        reason: format!("http {status}: {what}"),
        retry_after: retry_after(headers),
    };
    match status {
        200..=299 => match parse_ingest_response(body) {
            Ok(items) => Classified::Delivered(
                items
                    .into_iter()
                    .map(|mut i| {
                        i.error = i.error.map(|e| sanitize(&e, secret));
                        i
                    })
                    .collect(),
            ),
            Err(why) => retry(format!(
                "unexpected response body, the deployment may be mid-deploy ({})",
                sanitize(&why, secret)
            )),
        },
        401 | 403 => Classified::Unauthorized {
            reason: format!("http {status}: {}", request_error_message(body, secret)),
        },
        408 | 429 | 500..=599 => retry(request_error_message(body, secret)),
        // Our HTTP action's error body (`{"code","message"}`: BAD_REQUEST, BATCH_TOO_LARGE) is
        // a verdict on this request. A 4xx with any other body came from something else: Convex
        // itself when the deployment has no `/ingest` route (functions not deployed yet, or the
        // URL names another deployment), a proxy, a captive portal. No record is at fault, so
        // keep them all and retry.
        400..=499 if is_ingest_error(body) => Classified::Rejected {
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

/// The [`Classified::Retry`] for a request that got no HTTP answer (connect, TLS, timeout,
/// reset, body read). `timeout` is the request timeout, named in the reason when it fired.
pub(crate) fn transport_error(
    error: reqwest::Error,
    timeout: Duration,
    secret: Option<&str>,
) -> Classified {
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
    Classified::Retry {
        reason: format!("{what}: {}", sanitize(&chain, secret)),
        retry_after: None,
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

/// Parses `{"results":[{"sessionId","action",…}, …]}`. `Err` describes a body of the wrong
/// shape.
fn parse_ingest_response(body: &[u8]) -> Result<Vec<ItemResult>, String> {
    #[derive(Deserialize)]
    struct Answer {
        results: Vec<ItemResult>,
    }
    if body.is_empty() {
        return Err("empty body".into());
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not json: {e}"))?;
    if v.get("results").is_none() {
        return Err("no results field".into());
    }
    serde_json::from_value::<Answer>(v)
        .map(|a| a.results)
        .map_err(|e| format!("results have the wrong shape: {e}"))
}

/// The message of a request-level error body (`{"code","message"}`), else the body as text.
/// True for the ingest HTTP action's error body: a JSON object with a string `code`.
fn is_ingest_error(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("code").map(|c| c.is_string()))
        .unwrap_or(false)
}

fn request_error_message(body: &[u8], secret: Option<&str>) -> String {
    #[derive(Deserialize)]
    struct RequestError {
        code: String,
        #[serde(default)]
        message: String,
    }
    if body.is_empty() {
        return "(empty body)".into();
    }
    match serde_json::from_slice::<RequestError>(body) {
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
    use reqwest::header::HeaderValue;

    fn none() -> HeaderMap {
        HeaderMap::new()
    }

    fn with_retry_after(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        h
    }

    fn retry_after_of(c: &Classified) -> Option<Duration> {
        match c {
            Classified::Retry { retry_after, .. } => *retry_after,
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
    fn success_gives_the_items_in_order_with_refusals_marked() {
        let Classified::Delivered(items) = classify(200, &none(), SUCCESS.as_bytes()) else {
            panic!("not delivered");
        };
        let ids: Vec<&str> = items.iter().map(|i| i.session_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c", "d", "e", "f", ""]);
        let refused: Vec<bool> = items.iter().map(ItemResult::is_refused).collect();
        assert_eq!(refused, [false, false, false, false, true, true, true]);
        assert_eq!(items[4].stored_device_id.as_deref(), Some("dev-other"));
        assert_eq!(items[0].stored_device_id, None);
        assert_eq!(
            items[4].refusal().unwrap(),
            "conflict: session e is stored under another device id (dev-other)"
        );
        assert_eq!(
            items[5].refusal().unwrap(),
            "rejected by the deployment: Value is too large (1.20 MiB > maximum size 1 MiB)"
        );
        assert_eq!(items[0].refusal(), None);
    }
    #[test]
    fn any_2xx_is_parsed_like_200() {
        for status in [200, 201, 299] {
            assert!(
                matches!(classify(status, &none(), SUCCESS.as_bytes()), Classified::Delivered(v) if v.len() == 7),
                "{status}"
            );
        }
    }
    #[test]
    fn unknown_actions_are_kept_and_count_as_delivered() {
        let body = br#"{"results":[{"sessionId":"a","action":"merged","extra":1}]}"#;
        let Classified::Delivered(items) = classify(200, &none(), body) else {
            panic!()
        };
        assert_eq!(items[0].action, "merged");
        assert!(!items[0].is_refused());
    }

    #[test]
    fn the_actions_errors_are_rejections_naming_the_code() {
        let body = br#"{"code":"BATCH_TOO_LARGE","message":"At most 500 sessions per request, got 501","limit":500}"#;
        assert_eq!(
            classify(413, &none(), body),
            Classified::Rejected {
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
            Classified::Retry { reason, .. } => {
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
                Classified::Unauthorized {
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
                Classified::Retry {
                    reason: format!("http {status}: Overloaded: busy"),
                    retry_after: Some(Duration::from_secs(7))
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
                Classified::Rejected {
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
                    matches!(&c, Classified::Retry { reason, .. } if reason.starts_with(&format!("http {status}: unexpected response body"))),
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
                Classified::Retry {
                    reason: format!("http {status}: unexpected status (location https://elsewhere.example/ingest): (empty body)"),
                    retry_after: Some(Duration::from_secs(2)),
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
        let c = classify_redacting(400, &none(), &body, Some(secret));
        let mut text = format!("{c:?} {c}");
        // A per-record error echoing the record (and the token) is redacted too.
        let body = serde_json::to_vec(&serde_json::json!({"results": [
            {"sessionId": "a", "action": "rejected", "error": message}
        ]}))
        .unwrap();
        let c = classify_redacting(200, &none(), &body, Some(secret));
        let Classified::Delivered(items) = &c else {
            panic!("{c:?}")
        };
        text.push_str(&format!("{c:?} {:?}", items[0].refusal()));
        assert!(!text.contains(secret) && !text.contains(escaped), "{text}");
        assert!(
            !text.contains("tok\\\"en") && !text.contains("tok\"en"),
            "{text}"
        );
        let body = format!(r#"{{"code":"Overloaded","message":"{escaped}"}}"#);
        let c = classify_redacting(503, &none(), body.as_bytes(), Some(secret));
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
        let c = Classified::Retry {
            reason: "http 429: x".into(),
            retry_after: Some(Duration::from_secs(7)),
        };
        assert_eq!(c.to_string(), "retry: http 429: x (retry-after 7s)");
        assert_eq!(c.kind(), "retry");
        let Classified::Delivered(items) = classify(200, &none(), SUCCESS.as_bytes()) else {
            panic!()
        };
        assert_eq!(
            Classified::Delivered(items).to_string(),
            "delivered 7 records (3 refused)"
        );
    }

    #[test]
    fn a_4xx_that_is_not_from_convex_is_retried_not_dead_lettered() {
        let html = b"<html><body>400 Bad Request (proxy)</body></html>";
        assert!(matches!(
            classify(400, &HeaderMap::new(), html),
            Classified::Retry { .. }
        ));
        assert!(matches!(
            classify(404, &HeaderMap::new(), b""),
            Classified::Retry { .. }
        ));
        let ours = br#"{"code":"BAD_REQUEST","message":"The body is not a JSON object"}"#;
        match classify(400, &HeaderMap::new(), ours) {
            Classified::Rejected { reason } => assert!(reason.contains("BAD_REQUEST"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}
