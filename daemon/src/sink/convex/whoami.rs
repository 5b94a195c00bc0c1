//! `GET <HTTP-actions origin>/whoami` with the bearer token: which device the deployment knows
//! this machine as (`convex/convex/http.ts`). One request, no retry: `login` checks a token with
//! it before storing it, `check-config` shows the answer, and `run` asks once at start and keeps
//! the answer in the status file for `status`.
//!
//! | answer | [`WhoAmI`] |
//! |---|---|
//! | 200 `{"device":"<name>","deviceId":"<id>"\|null}` | `Device { name, device_id }` |
//! | 200 `{"device":null,"legacy":true}` | `Legacy` (the shared `INGEST_TOKEN`) |
//! | 401, 403 | `Rejected` (with the server's one-line message) |
//! | 404 | `NoRoute` (functions older than `/whoami`, or another deployment) |
//! | no answer (connect, TLS, timeout) | `Unreachable` |
//! | anything else | `Unexpected` |
//!
//! The token travels only in the `Authorization` header (marked sensitive) and is removed from
//! every message kept (`classify::sanitize`).

use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION};
use serde::Deserialize;

use super::classify::sanitize;
use crate::config::ConvexConfig;

/// The HTTP action's route, relative to the deployment's HTTP-actions origin.
pub const WHOAMI_ROUTE: &str = "whoami";

/// Largest response body read (bytes).
const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the deployment said about the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WhoAmI {
    /// A device token: the device's name and the record `deviceId` it is bound to (`None`
    /// until its first record binds it).
    Device {
        /// The name given at `devices:create`.
        name: String,
        /// The bound record `deviceId`.
        device_id: Option<String>,
    },
    /// The deployment's legacy shared `INGEST_TOKEN` (accepted only with
    /// `ALLOW_LEGACY_INGEST_TOKEN=1`).
    Legacy,
    /// 401 or 403: not a (live) token of this deployment.
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The server's message, one line, without the token.
        message: String,
    },
    /// 404: the deployment serves no `/whoami` (its functions predate it, or the URL names
    /// another deployment).
    NoRoute,
    /// No HTTP answer: the reason (connect, TLS, timeout), without the token.
    Unreachable {
        /// What failed.
        reason: String,
    },
    /// Another status or a body of another shape.
    Unexpected {
        /// The status and the body, one line, without the token.
        reason: String,
    },
}

impl WhoAmI {
    /// One line for people: `device \`work-laptop\` (device id …)`, `the deployment rejected
    /// the token (http 401: …)`, ….
    pub fn describe(&self) -> String {
        match self {
            WhoAmI::Device {
                name,
                device_id: Some(id),
            } => format!("device `{name}` (device id {id})"),
            WhoAmI::Device {
                name,
                device_id: None,
            } => format!(
                "device `{name}` (no device id bound yet: the first record it sends binds it)"
            ),
            WhoAmI::Legacy => "the deployment's legacy shared INGEST_TOKEN, not a device token \
                 (it can write any device's rows and works only while ALLOW_LEGACY_INGEST_TOKEN=1)"
                .to_string(),
            WhoAmI::Rejected { status, message } => {
                format!("the deployment rejected the token (http {status}: {message})")
            }
            WhoAmI::NoRoute => "the deployment has no /whoami HTTP action: deploy this \
                 version's convex/ functions (`npx convex deploy`)"
                .to_string(),
            WhoAmI::Unreachable { reason } => format!("the deployment is unreachable ({reason})"),
            WhoAmI::Unexpected { reason } => {
                format!("unexpected answer from the deployment ({reason})")
            }
        }
    }
}

#[derive(Deserialize)]
struct Body {
    device: Option<String>,
    #[serde(default, rename = "deviceId")]
    device_id: Option<String>,
    #[serde(default)]
    legacy: bool,
}

/// Asks `GET <site of cfg.url>/whoami` with `cfg.ingest_token`, giving up after `timeout`
/// (the connect timeout is at most that too). Never retries.
pub async fn whoami(cfg: &ConvexConfig, timeout: Duration) -> WhoAmI {
    let secret = Some(cfg.ingest_token.expose());
    let (endpoint, loopback) = match super::url::check(&cfg.url).and_then(|u| {
        Ok((
            super::url::whoami_endpoint(&u)?,
            super::url::is_loopback(&u),
        ))
    }) {
        Ok(e) => e,
        Err(reason) => return WhoAmI::Unexpected { reason },
    };
    let Ok(mut bearer) = HeaderValue::from_str(&format!("Bearer {}", cfg.ingest_token.expose()))
    else {
        return WhoAmI::Unexpected {
            reason: "the token contains characters not allowed in an HTTP header".into(),
        };
    };
    bearer.set_sensitive(true);
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(super::MAX_CONNECT_TIMEOUT))
        .redirect(reqwest::redirect::Policy::none())
        .min_tls_version(reqwest::tls::Version::TLS_1_2)
        .user_agent(super::USER_AGENT);
    if loopback {
        // Never through an environment proxy (see `url::is_loopback`).
        builder = builder.no_proxy();
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => {
            return WhoAmI::Unexpected {
                reason: sanitize(&e.to_string(), secret),
            }
        }
    };
    let sent = client
        .get(endpoint)
        .header(AUTHORIZATION, bearer)
        .send()
        .await;
    let mut response = match sent {
        Ok(r) => r,
        Err(e) => {
            let reason = match super::classify::transport_error(e, timeout, secret) {
                crate::sink::Outcome::Retry { reason, .. } => reason,
                _ => "transport error".to_string(),
            };
            return WhoAmI::Unreachable { reason };
        }
    };
    let status = response.status().as_u16();
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_BODY_BYTES => {
                body.extend_from_slice(&chunk)
            }
            Ok(Some(_)) => {
                return WhoAmI::Unexpected {
                    reason: format!("http {status}: a body over {MAX_BODY_BYTES} bytes"),
                }
            }
            Ok(None) => break,
            Err(e) => {
                return WhoAmI::Unreachable {
                    reason: format!(
                        "http {status}: reading the answer failed: {}",
                        sanitize(&e.without_url().to_string(), secret)
                    ),
                }
            }
        }
    }
    classify(status, &body, secret)
}

/// The [`WhoAmI`] of an HTTP answer (see the table in the module doc). Pure.
pub fn classify(status: u16, body: &[u8], secret: Option<&str>) -> WhoAmI {
    let text = || sanitize(&String::from_utf8_lossy(body), secret);
    match status {
        200 => match serde_json::from_slice::<Body>(body) {
            Ok(Body {
                device: Some(name),
                device_id,
                ..
            }) => WhoAmI::Device {
                name: sanitize(&name, secret),
                device_id: device_id.map(|d| sanitize(&d, secret)),
            },
            Ok(Body {
                device: None,
                legacy: true,
                ..
            }) => WhoAmI::Legacy,
            _ => WhoAmI::Unexpected {
                reason: format!("http 200: {}", text()),
            },
        },
        401 | 403 => WhoAmI::Rejected {
            status,
            message: match serde_json::from_slice::<super::wire::IngestError>(body) {
                Ok(e) => sanitize(&e.message, secret),
                Err(_) => text(),
            },
        },
        404 => WhoAmI::NoRoute,
        _ => WhoAmI::Unexpected {
            reason: format!("http {status}: {}", text()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_answer_is_classified_and_the_token_never_kept() {
        let t = Some("tok-secret-1");
        let cases: &[(u16, &str, WhoAmI)] = &[
            (
                200,
                r#"{"device":"work-laptop","deviceId":"abc"}"#,
                WhoAmI::Device {
                    name: "work-laptop".into(),
                    device_id: Some("abc".into()),
                },
            ),
            (
                200,
                r#"{"device":"new","deviceId":null}"#,
                WhoAmI::Device {
                    name: "new".into(),
                    device_id: None,
                },
            ),
            (200, r#"{"device":null,"legacy":true}"#, WhoAmI::Legacy),
            (
                401,
                r#"{"code":"UNAUTHORIZED","message":"bad tok-secret-1"}"#,
                WhoAmI::Rejected {
                    status: 401,
                    message: "bad [redacted]".into(),
                },
            ),
            (404, "No matching routes found", WhoAmI::NoRoute),
            (
                200,
                "<html>portal</html>",
                WhoAmI::Unexpected {
                    reason: "http 200: <html>portal</html>".into(),
                },
            ),
            (
                502,
                "bad\ngateway",
                WhoAmI::Unexpected {
                    reason: "http 502: bad gateway".into(),
                },
            ),
        ];
        for (status, body, want) in cases {
            let got = classify(*status, body.as_bytes(), t);
            assert_eq!(&got, want, "{status} {body}");
            assert!(!got.describe().contains("tok-secret-1"));
        }
    }
}
