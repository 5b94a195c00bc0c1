//! A fault-injecting stand-in for a Convex deployment's ingest HTTP action, for tests.
//!
//! A loopback HTTP/1.1 server (127.0.0.1, a free port) that answers
//! `POST /ingest` with `Authorization: Bearer <token>` and `{"sessions":[…]}` the way a
//! deployment running `convex/convex/http.ts` does, and that a test can script at run time
//! through a [`FaultHandle`]:
//!
//! - **Normal** ([`Mode::Normal`]): checks the request like the HTTP action (route
//!   `POST /ingest`, else Convex's plain-text 404; the bearer token, else `401
//!   {"code":"UNAUTHORIZED"}`; a JSON object body with a non-empty `sessions` array, else `400
//!   {"code":"BAD_REQUEST"}`; at most [`MAX_BATCH`] records, else `413
//!   {"code":"BATCH_TOO_LARGE"}`), validates each record (an object with string
//!   `sessionId`/`deviceId` and number `updatedAt`/`exportedAt`; an invalid one gets
//!   `rejected` + `error`, and the others are still processed, as the action does), then upserts
//!   every valid record with the ingest rule: no row → `inserted`; other `deviceId` →
//!   `conflict` + `storedDeviceId`; stored version greater → `stale`; equal → `unchanged`; else
//!   `updated` (the version: `revision` when both records have one, else
//!   `(updatedAt, exportedAt)`). The answer is `200 {"results":[{"sessionId","action",…}, …]}`
//!   in input order.
//! - **Faults**: any status with an optional `Retry-After` value (seconds, HTTP-date or garbage)
//!   and body; the action's error bodies (`{"code","message"}`); `401 UNAUTHORIZED`; a delay before the normal answer; hanging forever (the request is read, no
//!   answer ever comes); a connection reset; refusing connections (the listener is closed and open
//!   connections are dropped) and coming back on the same port; rejecting chosen session ids
//!   (each gets a `rejected` result, the rest of its batch is stored).
//!   [`FaultHandle::script`] queues one-shot answers consumed by the next requests, in order,
//!   before the standing [`FaultHandle::set_mode`].
//! - **`GET /whoami`** (which device a token is; the daemon asks it once at start, `login` and
//!   `check-config` too) is answered outside the fault model: `200
//!   {"device":"fault-server","deviceId":null}` for the expected token, else the 401, never
//!   scripted, delayed or logged as a request (so a script and the request log stay about
//!   ingest); [`FaultHandle::whoami_count`] counts them.
//! - **Records**: every request ([`RequestLog`]: arrival time, headers of interest, the body,
//!   session ids, the mode applied, the status sent), every upsert ([`Upsert`]: session id,
//!   `updatedAt`, `exportedAt`, the record, the action, arrival time), and the latest stored
//!   record per session ([`FaultHandle::latest`]).
//!
//! Times are [`tokio::time::Instant`]s. The server runs on the test's runtime and stops when the
//! [`FaultServer`] is dropped (its handle stays readable).
//!
//! Self-contained: it depends only on tokio, hyper 1 (with hyper-util and http-body-util) and
//! serde_json; the sink's unit tests and the integration tests use it from the dev-only
//! `test-support` crate.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// The ingest token the server expects unless [`FaultHandle::set_token`] changes it.
pub const TOKEN: &str = "fault-server-ingest-token";

/// Most records one request may carry (as `MAX_BATCH` in `convex/convex/http.ts`).
pub const MAX_BATCH: usize = 500;

/// How the server answers a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// Behave like the deployment: validate, check the token, upsert, answer success.
    Normal,
    /// Answer `status` with this body (`Content-Type: application/json`) and, when set, this
    /// exact `Retry-After` value (e.g. `"7"`, an HTTP-date, or garbage such as `"abc"`).
    Status {
        /// The HTTP status (100..=999).
        status: u16,
        /// The `Retry-After` header value, verbatim.
        retry_after: Option<String>,
        /// The response body, verbatim.
        body: String,
    },
    /// Wait this long, then behave as [`Mode::Normal`].
    Delay(Duration),
    /// Read the request, then never answer (the connection stays open until the client gives
    /// up or the server stops).
    Hang,
    /// Read the request, then close the connection without an answer.
    Reset,
    /// As the standing mode: stop listening and drop open connections, so connecting fails;
    /// setting any other mode listens again on the same port. In a script: as [`Mode::Reset`].
    Refuse,
}

impl Mode {
    /// `status` with a Convex request-error body `{"code","message"}`.
    pub fn status(status: u16) -> Mode {
        Mode::Status {
            status,
            retry_after: None,
            body: request_error_body(status),
        }
    }

    /// `status` with a request-error body and the given `Retry-After` value, verbatim.
    pub fn retry_after(status: u16, value: impl Into<String>) -> Mode {
        Mode::Status {
            status,
            retry_after: Some(value.into()),
            body: request_error_body(status),
        }
    }

    /// `status` with this exact body (e.g. garbage after a 200).
    pub fn raw(status: u16, body: impl Into<String>) -> Mode {
        Mode::Status {
            status,
            retry_after: None,
            body: body.into(),
        }
    }

    /// `status` with the ingest action's error body `{"code","message"}`.
    pub fn ingest_error(status: u16, code: &str, message: &str) -> Mode {
        Mode::Status {
            status,
            retry_after: None,
            body: json!({ "code": code, "message": message }).to_string(),
        }
    }

    /// The action's answer to a wrong token: `401 {"code":"UNAUTHORIZED",…}`.
    pub fn unauthorized() -> Mode {
        Mode::ingest_error(
            401,
            "UNAUTHORIZED",
            "The bearer token does not match this deployment's INGEST_TOKEN",
        )
    }

    fn label(&self) -> String {
        match self {
            Mode::Normal => "normal".into(),
            Mode::Status { status, .. } => format!("status {status}"),
            Mode::Delay(d) => format!("delay {d:?}"),
            Mode::Hang => "hang".into(),
            Mode::Reset | Mode::Refuse => "reset".into(),
        }
    }
}

/// One record the ingest processed (the call passed validation and the token check).
#[derive(Debug, Clone)]
pub struct Upsert {
    /// `sessionId`.
    pub session_id: String,
    /// `deviceId`.
    pub device_id: String,
    /// `updatedAt` (ms).
    pub updated_at: f64,
    /// `exportedAt` (ms).
    pub exported_at: f64,
    /// `inserted`, `updated`, `unchanged`, `stale` or `conflict`.
    pub action: String,
    /// The record as received.
    pub record: Value,
    /// When its request arrived.
    pub at: Instant,
}

/// One request the server received (whatever the answer).
#[derive(Debug, Clone)]
pub struct RequestLog {
    /// Arrival time (before any injected delay).
    pub at: Instant,
    /// HTTP method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The `Authorization` header, verbatim (it holds the token: the test server keeps it for
    /// assertions).
    pub authorization: Option<String>,
    /// The body, verbatim.
    pub body: Vec<u8>,
    /// `sessions[*].sessionId` when the body has them.
    pub session_ids: Vec<String>,
    /// The mode that answered (`normal`, `status 503`, `hang`, …).
    pub mode: String,
    /// The status sent; `None` while pending, for a hang and for a reset.
    pub status: Option<u16>,
}

/// Owns the running server; dropping it stops the server (the handle stays readable).
pub struct FaultServer {
    handle: FaultHandle,
}

/// Shared, cloneable control of a [`FaultServer`].
#[derive(Clone)]
pub struct FaultHandle {
    shared: Arc<Shared>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Control {
    listening: bool,
    generation: u64,
    shutdown: bool,
}

struct Shared {
    addr: SocketAddr,
    state: Mutex<State>,
    control: watch::Sender<Control>,
    bound: watch::Sender<bool>,
}

struct Stored {
    device_id: String,
    version: Version,
    record: Value,
}

/// What the upsert orders records of one session by, as `convex/convex/sessions.ts`
/// `compareVersions` does: `revision` when both records have one, else
/// `(updatedAt, exportedAt)`.
#[derive(Debug, Clone, Copy)]
struct Version {
    revision: Option<f64>,
    updated_at: f64,
    exported_at: f64,
}

impl Version {
    fn cmp(&self, other: &Version) -> std::cmp::Ordering {
        match (self.revision, other.revision) {
            (Some(a), Some(b)) => a.total_cmp(&b),
            _ => (self.updated_at, self.exported_at)
                .partial_cmp(&(other.updated_at, other.exported_at))
                .unwrap_or(std::cmp::Ordering::Equal),
        }
    }
}

struct State {
    mode: Mode,
    script: VecDeque<Mode>,
    token: Option<String>,
    rejected: HashSet<String>,
    poisoned: HashSet<String>,
    requests: Vec<RequestLog>,
    whoami_count: usize,
    upserts: Vec<Upsert>,
    latest: BTreeMap<String, Stored>,
}

impl FaultServer {
    /// Starts a server on `127.0.0.1:0` in [`Mode::Normal`], expecting [`TOKEN`].
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start() -> (FaultServer, FaultHandle) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fault server: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("fault server: local_addr");
        let (control, _) = watch::channel(Control {
            listening: true,
            generation: 0,
            shutdown: false,
        });
        let (bound, _) = watch::channel(true);
        let shared = Arc::new(Shared {
            addr,
            state: Mutex::new(State {
                mode: Mode::Normal,
                script: VecDeque::new(),
                token: Some(TOKEN.to_string()),
                rejected: HashSet::new(),
                poisoned: HashSet::new(),
                requests: Vec::new(),
                whoami_count: 0,
                upserts: Vec::new(),
                latest: BTreeMap::new(),
            }),
            control,
            bound,
        });
        tokio::spawn(accept_loop(shared.clone(), listener));
        let handle = FaultHandle { shared };
        (
            FaultServer {
                handle: handle.clone(),
            },
            handle,
        )
    }

    /// A server for a test that is not async (driving the binary as a process): started in
    /// `mode` on a runtime of its own (one worker thread), which the caller keeps, with the
    /// server, for as long as it is needed; [`Background::set_mode`] switches the mode.
    ///
    /// # Panics
    /// When the runtime cannot be built or no loopback port can be bound.
    pub fn in_background(mode: Mode) -> Background {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("fault server: a runtime");
        let (server, handle) = rt.block_on(FaultServer::start());
        rt.block_on(handle.set_mode(mode));
        Background {
            handle,
            _server: server,
            rt,
        }
    }

    /// A handle to the server.
    pub fn handle(&self) -> FaultHandle {
        self.handle.clone()
    }
}

/// A [`FaultServer`] on its own runtime ([`FaultServer::in_background`]).
pub struct Background {
    /// The server's handle.
    pub handle: FaultHandle,
    _server: FaultServer,
    rt: tokio::runtime::Runtime,
}

impl Background {
    /// [`FaultHandle::set_mode`], waited for.
    pub fn set_mode(&self, mode: Mode) {
        self.rt.block_on(self.handle.set_mode(mode));
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.handle
            .shared
            .control
            .send_modify(|c| c.shutdown = true);
    }
}

impl FaultHandle {
    /// The deployment URL to configure: `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// The listening address (the same across [`Mode::Refuse`] and back).
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Sets the standing mode, used when no scripted answer is queued. Returns once it is in
    /// effect: after [`Mode::Refuse`] nothing listens and earlier connections are closed; after
    /// any other mode the server listens (again) on the same port.
    pub async fn set_mode(&self, mode: Mode) {
        let listen = mode != Mode::Refuse;
        self.state().mode = mode;
        let current = *self.shared.control.borrow();
        if current.listening != listen {
            self.shared.control.send_modify(|c| {
                c.listening = listen;
                if !listen {
                    c.generation += 1;
                }
            });
        }
        let mut bound = self.shared.bound.subscribe();
        let _ = bound.wait_for(|b| *b == listen).await;
    }

    /// Queues one-shot answers, consumed by the next requests in order before the standing mode
    /// applies again.
    pub fn script(&self, modes: impl IntoIterator<Item = Mode>) {
        self.state().script.extend(modes);
    }

    /// Closes every open connection (clients must reconnect); listening is unaffected.
    pub fn drop_connections(&self) {
        self.shared.control.send_modify(|c| c.generation += 1);
    }

    /// The token the ingest accepts; `None` accepts any token.
    pub fn set_token(&self, token: Option<&str>) {
        self.state().token = token.map(str::to_string);
    }

    /// Makes every record with one of these session ids come back `rejected` (as a record
    /// the schema refuses); the other records of its request are processed.
    pub fn reject_sessions<I, S>(&self, ids: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.state()
            .rejected
            .extend(ids.into_iter().map(Into::into));
    }

    /// Makes every request that holds a record with one of these session ids fail as a whole
    /// with HTTP 500, as Convex answers when the ingest function throws (a record that breaks
    /// the function, not one its validation refuses): nothing of that request is stored.
    pub fn poison_sessions<I, S>(&self, ids: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.state()
            .poisoned
            .extend(ids.into_iter().map(Into::into));
    }

    /// Forgets every [`FaultHandle::reject_sessions`] and [`FaultHandle::poison_sessions`].
    pub fn clear_rejections(&self) {
        let mut st = self.state();
        st.rejected.clear();
        st.poisoned.clear();
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestLog> {
        self.state().requests.clone()
    }

    /// How many `GET /whoami` requests were answered (they are not in [`FaultHandle::requests`]).
    pub fn whoami_count(&self) -> usize {
        self.state().whoami_count
    }

    /// How many requests arrived so far.
    pub fn request_count(&self) -> usize {
        self.state().requests.len()
    }

    /// Arrival times of every request so far.
    pub fn request_times(&self) -> Vec<Instant> {
        self.state().requests.iter().map(|r| r.at).collect()
    }

    /// Gaps between consecutive request arrivals.
    pub fn request_gaps(&self) -> Vec<Duration> {
        let times = self.request_times();
        times.windows(2).map(|w| w[1] - w[0]).collect()
    }

    /// Every record processed so far (including `unchanged`, `stale` and `conflict` ones).
    pub fn upserts(&self) -> Vec<Upsert> {
        self.state().upserts.clone()
    }

    /// The stored record per session id (the latest by its version: `revision`, else
    /// `(updatedAt, exportedAt)`).
    pub fn latest(&self) -> BTreeMap<String, Value> {
        self.state()
            .latest
            .iter()
            .map(|(k, v)| (k.clone(), v.record.clone()))
            .collect()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A minimal record the ingest accepts (plus a couple of ordinary fields), as JSON bytes.
pub fn sample_record(
    session_id: &str,
    device_id: &str,
    updated_at: i64,
    exported_at: i64,
) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 1,
        "sessionId": session_id,
        "deviceId": device_id,
        "hostname": "fault-host",
        "title": format!("session {session_id}"),
        "createdAt": 1_700_000_000_000_i64,
        "updatedAt": updated_at,
        "exportedAt": exported_at,
        "messageCount": 3,
    }))
    .expect("a json! value serializes")
}

async fn accept_loop(shared: Arc<Shared>, first: TcpListener) {
    let mut control = shared.control.subscribe();
    let mut listener = Some(first);
    loop {
        let c = *control.borrow_and_update();
        if c.shutdown {
            return;
        }
        if !c.listening {
            listener = None;
        } else if listener.is_none() {
            listener = Some(bind_again(shared.addr).await);
        }
        shared.bound.send_replace(listener.is_some());
        match &listener {
            Some(l) => tokio::select! {
                accepted = l.accept() => {
                    if let Ok((stream, _)) = accepted {
                        tokio::spawn(serve_connection(shared.clone(), stream));
                    }
                }
                changed = control.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            },
            None => {
                if control.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn bind_again(addr: SocketAddr) -> TcpListener {
    let mut last = None;
    for _ in 0..100 {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("fault server: cannot listen on {addr} again: {last:?}");
}

async fn serve_connection(shared: Arc<Shared>, stream: TcpStream) {
    let mut control = shared.control.subscribe();
    let generation = control.borrow_and_update().generation;
    let for_service = shared.clone();
    let service = service_fn(move |req| handle_request(for_service.clone(), req));
    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    loop {
        tokio::select! {
            _ = &mut conn => return,
            changed = control.changed() => {
                if changed.is_err() {
                    return;
                }
                let c = *control.borrow_and_update();
                if c.shutdown || c.generation != generation {
                    return; // dropping `conn` closes the socket
                }
            }
        }
    }
}

type Answer = Response<Full<Bytes>>;

async fn handle_request(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Answer, std::io::Error> {
    let at = Instant::now();
    if req.method() == hyper::Method::GET && req.uri().path() == "/whoami" {
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(|t| t.trim().to_string());
        let mut st = lock(&shared);
        st.whoami_count += 1;
        return Ok(match &st.token {
            Some(expected) if given.as_deref() != Some(expected.as_str()) => request_error(
                401,
                "UNAUTHORIZED",
                "the bearer token is not a device token of this deployment",
            ),
            _ => respond(
                200,
                json!({"device": "fault-server", "deviceId": null}).to_string(),
                None,
            ),
        });
    }
    let mode = {
        let mut st = lock(&shared);
        let standing = st.mode.clone();
        st.script.pop_front().unwrap_or(standing)
    };
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header("content-type");
    let authorization = header("authorization");
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let index = {
        let mut st = lock(&shared);
        st.requests.push(RequestLog {
            at,
            method: method.clone(),
            path: path.clone(),
            content_type: content_type.clone(),
            authorization: authorization.clone(),
            body: body.to_vec(),
            session_ids: session_ids_of(&body),
            mode: mode.label(),
            status: None,
        });
        st.requests.len() - 1
    };
    let incoming = Received {
        method: &method,
        path: &path,
        content_type: content_type.as_deref(),
        authorization: authorization.as_deref(),
        body: &body,
        at,
    };
    let answer = match mode {
        Mode::Hang => match std::future::pending::<std::convert::Infallible>().await {},
        Mode::Reset | Mode::Refuse => {
            return Err(std::io::Error::other(
                "fault server: injected connection reset",
            ))
        }
        Mode::Delay(d) => {
            tokio::time::sleep(d).await;
            ingest(&shared, &incoming)
        }
        Mode::Status {
            status,
            retry_after,
            body,
        } => respond(status, body, retry_after.as_deref()),
        Mode::Normal => ingest(&shared, &incoming),
    };
    if let Some(entry) = lock(&shared).requests.get_mut(index) {
        entry.status = Some(answer.status().as_u16());
    }
    Ok(answer)
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared
        .state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The parts of a request the ingest looks at.
struct Received<'a> {
    method: &'a str,
    path: &'a str,
    content_type: Option<&'a str>,
    authorization: Option<&'a str>,
    body: &'a [u8],
    at: Instant,
}

fn ingest(shared: &Shared, req: &Received<'_>) -> Answer {
    if req.method != "POST" || req.path != "/ingest" {
        // What Convex answers for a route the deployment's http.ts does not have.
        let mut answer = respond(404, "No matching routes found".into(), None);
        answer
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        return answer;
    }
    let mut st = lock(shared);
    if let Some(expected) = &st.token {
        let given = req
            .authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim);
        if given != Some(expected.as_str()) {
            let mut answer = request_error(
                401,
                "UNAUTHORIZED",
                if given.is_none() {
                    "Missing `Authorization: Bearer <INGEST_TOKEN>` header"
                } else {
                    "The bearer token does not match this deployment's INGEST_TOKEN"
                },
            );
            answer
                .headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
            return answer;
        }
    }
    let list = match serde_json::from_slice::<Value>(req.body) {
        Ok(Value::Object(body)) => match body.get("sessions") {
            Some(Value::Array(list)) if !list.is_empty() => list.clone(),
            _ => return request_error(
                400,
                "BAD_REQUEST",
                "The body must be {\"sessions\": [<SessionExport>, ...]} with at least one record",
            ),
        },
        _ => return request_error(400, "BAD_REQUEST", "The body is not a JSON object"),
    };
    if list.len() > MAX_BATCH {
        return respond(
            413,
            json!({
                "code": "BATCH_TOO_LARGE",
                "message": format!("At most {MAX_BATCH} sessions per request, got {}", list.len()),
                "limit": MAX_BATCH,
            })
            .to_string(),
            None,
        );
    }
    let poisoned = list.iter().any(|r| {
        r.get("sessionId")
            .and_then(Value::as_str)
            .is_some_and(|id| st.poisoned.contains(id))
    });
    if poisoned {
        return respond(
            500,
            json!({"code": "Server Error", "message": "Uncaught RangeError: Invalid time value"})
                .to_string(),
            None,
        );
    }
    let mut results = Vec::with_capacity(list.len());
    for record in list {
        let s = match check_record(&record) {
            Ok(s) if !st.rejected.contains(&s.session_id) => s,
            checked => {
                let mut result = json!({ "action": "rejected" });
                let error = match checked {
                    Ok(s) => {
                        result["sessionId"] = json!(s.session_id);
                        format!(
                            "ArgumentValidationError: Value does not match validator. Path: .sessionId Value: {:?} (rejected by the fault server)",
                            s.session_id
                        )
                    }
                    Err(why) => {
                        if let Some(id) = record.get("sessionId").and_then(Value::as_str) {
                            result["sessionId"] = json!(id);
                        }
                        why
                    }
                };
                result["error"] = json!(error);
                results.push(result);
                continue;
            }
        };
        let mut result = json!({ "sessionId": s.session_id });
        let action = match st.latest.get(&s.session_id) {
            None => "inserted",
            Some(stored) if stored.device_id != s.device_id => {
                result["storedDeviceId"] = json!(stored.device_id);
                "conflict"
            }
            Some(stored) => match stored.version.cmp(&s.version()) {
                std::cmp::Ordering::Greater => "stale",
                std::cmp::Ordering::Equal => "unchanged",
                std::cmp::Ordering::Less => "updated",
            },
        };
        result["action"] = json!(action);
        if action == "inserted" || action == "updated" {
            st.latest.insert(
                s.session_id.clone(),
                Stored {
                    device_id: s.device_id.clone(),
                    version: s.version(),
                    record: s.record.clone(),
                },
            );
        }
        st.upserts.push(Upsert {
            session_id: s.session_id,
            device_id: s.device_id,
            updated_at: s.updated_at,
            exported_at: s.exported_at,
            action: action.to_string(),
            record: s.record,
            at: req.at,
        });
        results.push(result);
    }
    respond(200, json!({ "results": results }).to_string(), None)
}

struct Session {
    session_id: String,
    device_id: String,
    revision: Option<f64>,
    updated_at: f64,
    exported_at: f64,
    record: Value,
}

/// Checks the fields the upsert reads, like the schema's validators do; the error echoes the
/// value, as Convex's validation errors do.
fn check_record(record: &Value) -> Result<Session, String> {
    let r: Option<&Map<String, Value>> = record.as_object();
    let field = |name: &str| r.and_then(|r| r.get(name));
    let parsed = (
        field("sessionId").and_then(Value::as_str),
        field("deviceId").and_then(Value::as_str),
        field("updatedAt").and_then(Value::as_f64),
        field("exportedAt").and_then(Value::as_f64),
    );
    let (Some(session_id), Some(device_id), Some(updated_at), Some(exported_at)) = parsed else {
        return Err(format!(
            "ArgumentValidationError: Value does not match validator. Value: {record}"
        ));
    };
    Ok(Session {
        session_id: session_id.to_string(),
        device_id: device_id.to_string(),
        revision: field("revision").and_then(Value::as_f64),
        updated_at,
        exported_at,
        record: record.clone(),
    })
}

impl Session {
    fn version(&self) -> Version {
        Version {
            revision: self.revision,
            updated_at: self.updated_at,
            exported_at: self.exported_at,
        }
    }
}

fn session_ids_of(body: &[u8]) -> Vec<String> {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    v.pointer("/sessions")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|r| r.get("sessionId").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn request_error_body(status: u16) -> String {
    let code = match status {
        400 => "BAD_REQUEST",
        401 => "UNAUTHORIZED",
        403 => "Forbidden",
        404 => "NotFound",
        408 => "RequestTimeout",
        413 => "BATCH_TOO_LARGE",
        429 => "TooManyConcurrentRequests",
        500 => "INTERNAL",
        503 => "Overloaded",
        _ => "Injected",
    };
    json!({ "code": code, "message": format!("injected {status} by the fault server") }).to_string()
}

fn request_error(status: u16, code: &str, message: &str) -> Answer {
    respond(
        status,
        json!({ "code": code, "message": message }).to_string(),
        None,
    )
}

fn respond(status: u16, body: String, retry_after: Option<&str>) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(value) = retry_after {
        if let Ok(value) = HeaderValue::from_str(value) {
            response.headers_mut().insert(RETRY_AFTER, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::time::Duration;

    use crate::bounded;

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
            let many: Vec<Vec<u8>> = (0..=MAX_BATCH)
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
