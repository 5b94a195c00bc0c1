//! The wire types of the deployment's `POST /ingest` HTTP action (`convex/convex/http.ts`).
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
//!                 {"sessionId":"…","action":"rejected","error":"…"}, …]}
//! 400 {"code":"BAD_REQUEST","message":"…"}      413 {"code":"BATCH_TOO_LARGE",…}
//! 401 {"code":"UNAUTHORIZED","message":"…"}     500 {"code":"INTERNAL",…}
//! ```
//!
//! Each `<record>` is the stored bytes spliced in verbatim ([`RawValue`]), after checking that
//! it is one JSON object. `results` has one entry per record, in input order; see [`Action`].

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::sink::RecordOutcome;

/// The request body: `{"sessions":[…]}`, each record spliced in unparsed.
#[derive(Serialize)]
pub struct IngestBody<'a> {
    /// The records, in outbox order.
    pub sessions: Vec<&'a RawValue>,
}

/// What the ingest mutation did with one record (`results[i].action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    /// No row for the session: stored.
    Inserted,
    /// A row with an older `(updatedAt, exportedAt)`: replaced.
    Updated,
    /// The same `(updatedAt, exportedAt)` is stored: nothing written.
    Unchanged,
    /// A newer `(updatedAt, exportedAt)` is stored: this older record is ignored.
    Stale,
    /// A `deletion: "delete"` record: the session's document was removed (or was not stored).
    Deleted,
    /// The session is stored under another `deviceId`: not written, and never will be. Only
    /// deployments before device credentials answer it (today's answer `rejected`, without
    /// naming the other device).
    Conflict,
    /// The schema, a content rule (`convex/convex/validate.ts`), the device check (a record
    /// claiming another device's `deviceId`, a session stored under another device) or a
    /// document limit refused this record; the rest of the batch was processed.
    Rejected,
    /// An action a newer deployment added: counts as accepted (it answered with a verdict, and
    /// only `conflict` and `rejected` are refusals).
    #[serde(other)]
    Unknown,
}

/// One entry of `results`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngestResult {
    /// The record's `sessionId` (empty when the record has none).
    #[serde(default)]
    pub session_id: String,
    /// What was done.
    pub action: Action,
    /// With `conflict`: the `deviceId` already stored for this session.
    #[serde(default)]
    pub stored_device_id: Option<String>,
    /// With `rejected`: why the deployment refused the record (Convex validation errors echo
    /// values, so the caller sanitises it).
    #[serde(default)]
    pub error: Option<String>,
}

impl IngestResult {
    /// The sink-neutral verdict: `conflict` and `rejected` are refusals (with a one-line
    /// reason), everything else is accepted.
    pub fn outcome(&self) -> RecordOutcome {
        match self.action {
            Action::Conflict => RecordOutcome::Refused {
                reason: format!(
                    "conflict: session {} is stored under another device id ({})",
                    self.session_id,
                    self.stored_device_id.as_deref().unwrap_or("?")
                ),
            },
            Action::Rejected => RecordOutcome::Refused {
                reason: format!(
                    "rejected by the deployment: {}",
                    self.error.as_deref().unwrap_or("(no reason given)")
                ),
            },
            Action::Inserted
            | Action::Updated
            | Action::Unchanged
            | Action::Stale
            | Action::Deleted
            | Action::Unknown => RecordOutcome::Accepted,
        }
    }
}

/// The action's request-level error body: `{"code","message"}`.
#[derive(Debug, Deserialize)]
pub struct IngestError {
    /// `BAD_REQUEST`, `BATCH_TOO_LARGE`, `UNAUTHORIZED`, `INTERNAL` (or Convex's own codes on
    /// its errors, e.g. `TooManyConcurrentRequests`).
    pub code: String,
    /// A human-readable message.
    #[serde(default)]
    pub message: String,
}

/// Parses a 2xx body `{"results":[…]}`. `Err` describes a body of the wrong shape.
pub fn parse_results(body: &[u8]) -> Result<Vec<IngestResult>, String> {
    #[derive(Deserialize)]
    struct Answer {
        results: Vec<IngestResult>,
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

/// True for the action's error body: a JSON object with a string `code`.
pub fn is_ingest_error(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("code").map(|c| c.is_string()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_of_http_ts_parses_and_unknown_ones_are_kept_as_accepted() {
        // (action on the wire, parsed, refused)
        let table = [
            ("inserted", Action::Inserted, false),
            ("updated", Action::Updated, false),
            ("unchanged", Action::Unchanged, false),
            ("stale", Action::Stale, false),
            ("deleted", Action::Deleted, false),
            ("conflict", Action::Conflict, true),
            ("rejected", Action::Rejected, true),
            ("merged", Action::Unknown, false),
        ];
        for (wire, action, refused) in table {
            let body =
                format!(r#"{{"results":[{{"sessionId":"s","action":"{wire}","extra":1}}]}}"#);
            let got = parse_results(body.as_bytes()).unwrap();
            assert_eq!(got[0].action, action, "{wire}");
            assert_eq!(
                matches!(got[0].outcome(), RecordOutcome::Refused { .. }),
                refused,
                "{wire}"
            );
        }
    }

    #[test]
    fn the_action_names_match_the_deployments_functions() {
        // The deployment's own validators (sessions.ts: the upsert's result; http.ts: the
        // per-record rejection), read from the functions the daemon talks to.
        let functions = concat!(
            include_str!("../../../../convex/convex/sessions.ts"),
            include_str!("../../../../convex/convex/http.ts")
        );
        // ("conflict" is only answered by deployments before device credentials.)
        for name in ["inserted", "updated", "unchanged", "stale", "rejected"] {
            assert!(
                functions.contains(&format!("\"{name}\"")),
                "convex/convex/{{sessions,http}}.ts no longer name the action {name}"
            );
        }
    }
}
