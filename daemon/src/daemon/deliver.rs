//! The sender: drains one lane of the outbox into that lane's sink.
//!
//! Each configured sink has its own [`Sender`] over its own [`Lane`] (the local store always,
//! Convex when configured): its own FIFO, acks, dead letters, pacer, probe and canary, running
//! as its own task. So a sink that is down, slow or refusing only ever delays its own lane;
//! the other keeps draining, and a record leaves the outbox once every lane acknowledged it.
//!
//! # Rules
//! - Records are sent oldest first, in batches cut to the sink's declared [`Limits`] (records
//!   and bytes of record JSON; a record over the byte limit goes alone); an entry leaves the
//!   outbox
//!   only after the sink confirmed it ([`Outbox::ack`] is a compare-and-swap, so a newer version
//!   enqueued meanwhile stays pending).
//! - One [`Outcome`] drives everything, and one mapping ([`Pacer::observe`]) turns it into
//!   the wait before the next send:
//!   - delivered → ack each accepted record; refused ones (Convex: `conflict`, the session id
//!     is already stored under another device id, and `rejected`, the deployment's schema or a
//!     document limit refused that record; the rest of the batch was stored) go to the
//!     dead-letter tree;
//!   - retry (408, 429, 5xx, network, timeout) → one shared backoff with full jitter, honouring
//!     `Retry-After` clamped to the cap; nothing is dropped, there is no give-up;
//!   - rejected (the ingest action's 400/413) → a batch is re-sent record by record (the
//!     probe of the next section), so only the offending record goes to the dead-letter tree
//!     (logged once, kept for inspection with `queue list`, requeued with `queue retry-dead`);
//!   - unauthorized (401/403 from the ingest HTTP action) → all sending pauses, the
//!     queue is kept, an actionable error is logged, and delivery is retried at the backoff cap
//!     (so fixing the token on the deployment resumes delivery without a restart).
//!
//! # A record that breaks its whole batch
//! A record can make the sink fail the whole request in a way that looks transient (Convex: an
//! exception in the ingest function is an HTTP 500), and since batches go oldest first, it would
//! hold back everything behind it. So after [`PROBE_AFTER`] consecutive failed sends, the
//! sender **probes** the failing batch: it sends it record by record, acking what goes through.
//! A record that fails alone gets a *strike* only if the sink is shown to work right after:
//! the next record of the probe is delivered, or, when it was the last one, a **canary** — a
//! resend of the last record this sender delivered, which the upsert answers as unchanged — is
//! accepted. A record with [`SUSPECT_LIMIT`] strikes (counted per version, in memory) goes to
//! the dead-letter tree with the sink's reason, and the rest keeps flowing. A failure right
//! after a failure ends the probe: that is the sink failing, not a record, and the usual
//! backoff applies. So no guess about which errors are "permanent" is needed, and an outage
//! never dead-letters anything: the evidence is always a delivery just after the failure.
//!
//! A config reload (SIGHUP) hands the running sender a new sink and pacer through
//! [`Reconfigure`]; it is applied between two requests (never to one in flight), and the
//! outbox and its records are untouched.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::queue::{DeadLetterOutcome, Lane, Outbox, Pending, QueueError};
use crate::sink::{AnySink, Limits, Outcome, Pacer, RecordOutcome, Sink};

/// What one send attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The outbox was empty.
    Idle,
    /// Records were delivered (and maybe some dead-lettered); call again.
    Progress {
        /// Records acknowledged.
        delivered: usize,
        /// Records moved to the dead-letter tree.
        dead: usize,
    },
    /// A transient failure; wait `wait` before the next attempt.
    Backoff {
        /// The delay chosen by the pacer.
        wait: Duration,
        /// Why.
        reason: String,
    },
    /// The sink refused our credentials; wait `wait`.
    Unauthorized {
        /// The delay until the next try.
        wait: Duration,
        /// Why.
        reason: String,
    },
}

/// Consecutive failed sends before the sender probes the oldest batch record by record (see
/// the module doc).
pub const PROBE_AFTER: u32 = 3;

/// How many probes must find a record failing alone, while the sink works right after, before it
/// is dead-lettered.
pub const SUSPECT_LIMIT: u32 = 2;

/// New delivery settings for a running [`Sender`] (from a reloaded config).
pub struct Reconfigure {
    /// The new sink (with its limits).
    pub sink: AnySink,
    /// A fresh pacer (its backoff and unauthorized pause start over).
    pub pacer: Pacer,
    /// See [`Sender::with_in_flight_limit`].
    pub in_flight_limit: Duration,
}

/// Drains one lane of the outbox into its sink, one batch per [`Sender::step`].
pub struct Sender {
    outbox: Arc<Outbox>,
    lane: Lane,
    sink: AnySink,
    pacer: Pacer,
    in_flight_limit: Duration,
    /// Consecutive failed sends.
    failures: u32,
    /// Strikes per record version (outbox sequence number): how often it failed alone while
    /// the sink was shown to work right after; only versions of the last probed batch are kept.
    suspects: HashMap<u64, u32>,
    /// The JSON of the last record delivered, the canary of a probe (one record's bytes).
    canary: Option<Vec<u8>>,
}

impl Sender {
    /// A sender of `lane` of `outbox` into `sink`, paced by `pacer`.
    pub fn new(outbox: Arc<Outbox>, lane: Lane, sink: AnySink, pacer: Pacer) -> Sender {
        Sender {
            outbox,
            lane,
            sink,
            pacer,
            in_flight_limit: Duration::ZERO,
            failures: 0,
            suspects: HashMap::new(),
            canary: None,
        }
    }

    /// On shutdown, how long [`Sender::run`] lets a request in flight finish (default: not at all).
    pub fn with_in_flight_limit(mut self, limit: Duration) -> Sender {
        self.in_flight_limit = limit;
        self
    }

    /// A description of the sink (no secrets).
    pub fn describe(&self) -> String {
        self.sink.describe()
    }

    /// The lane it drains.
    pub fn lane(&self) -> Lane {
        self.lane
    }

    /// Time until the pacer allows the next send.
    pub fn until_ready(&self) -> Duration {
        self.pacer.until_ready()
    }

    /// Sends one batch and applies the outcome.
    ///
    /// # Errors
    /// [`QueueError`] from the outbox (storage errors are fatal for the daemon).
    pub async fn step(&mut self) -> Result<Step, QueueError> {
        let limits: Limits = self.sink.limits();
        let mut batch = self.outbox.pending(self.lane, limits.max_records.max(1))?;
        if batch.is_empty() {
            return Ok(Step::Idle);
        }
        batch.truncate(limits.batch_len(batch.iter().map(|p| p.record_json().len())));
        if self.failures >= PROBE_AFTER {
            return self.probe(&batch, "sends keep failing").await;
        }
        let outcome = self.send(&batch).await;
        self.count_outcome(&batch, &outcome);
        self.apply(&batch, outcome).await
    }

    /// Follows consecutive failures, and keeps the canary (the last record delivered).
    fn count_outcome(&mut self, batch: &[Pending], outcome: &Outcome) {
        match outcome {
            Outcome::Retry { .. } => self.failures += 1,
            Outcome::Delivered(results) => {
                self.failures = 0;
                let last = batch
                    .iter()
                    .zip(results)
                    .rev()
                    .find(|(_, r)| matches!(r, RecordOutcome::Accepted));
                if let Some((p, _)) = last {
                    self.canary = Some(p.record_json().to_vec());
                }
            }
            _ => {}
        }
    }

    /// Sends `batch` record by record (`why`: for the log) to find the records that fail it:
    /// one the sink refuses is dead-lettered at once, one that fails alone gets a strike (see
    /// the module doc).
    async fn probe(&mut self, batch: &[Pending], why: &str) -> Result<Step, QueueError> {
        self.failures = 0;
        self.suspects
            .retain(|seq, _| batch.iter().any(|p| p.seq() == *seq));
        tracing::info!(
            records = batch.len(),
            "{why}; sending the oldest batch record by record"
        );
        let (mut delivered, mut dead) = (0, 0);
        // The record that just failed alone (as it is stored now, its attempt counted), with
        // its reason and the step its failure gave.
        let mut failed: Option<(Pending, String, Step)> = None;
        for p in batch {
            let single = self.send(std::slice::from_ref(p)).await;
            self.count_outcome(std::slice::from_ref(p), &single);
            if let Outcome::Retry { reason, .. } = &single {
                let wait = self.pacer.observe(&single);
                let reason = reason.clone();
                // The stored entry changes with its attempt count: keep the new one, so a
                // strike's dead-letter compare-and-swap matches it.
                let current = self.outbox.record_attempt(p)?.unwrap_or_else(|| p.clone());
                self.outbox.record_error(self.lane, &reason)?;
                let step = Step::Backoff {
                    wait,
                    reason: reason.clone(),
                };
                if failed.is_some() {
                    // A failure right after a failure: the sink is failing, not a record.
                    return Ok(progress_or(delivered, dead, step));
                }
                failed = Some((current, reason, step));
                continue;
            }
            match Box::pin(self.apply(std::slice::from_ref(p), single)).await? {
                Step::Progress {
                    delivered: d,
                    dead: x,
                } => {
                    delivered += d;
                    dead += x;
                    if let Some((suspect, reason, _)) = failed.take() {
                        dead += self.strike(&suspect, &reason).await?;
                    }
                }
                // Unauthorized, or a backoff the pacer asked for: stop the probe here.
                step => return Ok(progress_or(delivered, dead, step)),
            }
        }
        if let Some((suspect, reason, step)) = failed {
            // The last record failed alone: is the sink working? Resend the canary.
            let works = match &self.canary {
                Some(json) => matches!(
                    self.sink.send(&[json.as_slice()]).await,
                    Outcome::Delivered(_)
                ),
                None => false,
            };
            if !works {
                return Ok(progress_or(delivered, dead, step));
            }
            dead += self.strike(&suspect, &reason).await?;
        }
        Ok(Step::Progress { delivered, dead })
    }

    /// Gives `p` a strike (it failed alone with `reason` while the sink worked right after);
    /// dead-letters it at [`SUSPECT_LIMIT`]. Returns how many records went to dead letters.
    async fn strike(&mut self, p: &Pending, reason: &str) -> Result<usize, QueueError> {
        let n = self.suspects.entry(p.seq()).or_default();
        *n += 1;
        tracing::info!(session_id = %p.session_id(), strikes = *n, "a record failed alone while the sink worked");
        if *n < SUSPECT_LIMIT {
            return Ok(0);
        }
        self.suspects.remove(&p.seq());
        let reason = format!(
            "failed alone {SUSPECT_LIMIT} times while the sink accepted other records: {reason}"
        );
        self.refuse(p, &reason).await
    }

    async fn send(&self, batch: &[Pending]) -> Outcome {
        let records: Vec<&[u8]> = batch.iter().map(|p| p.record_json()).collect();
        self.sink.send(&records).await
    }

    async fn apply(&mut self, batch: &[Pending], outcome: Outcome) -> Result<Step, QueueError> {
        let wait = self.pacer.observe(&outcome);
        match outcome {
            Outcome::Delivered(records) => {
                let mut dead = 0;
                let mut to_ack = Vec::with_capacity(batch.len());
                // One outcome per record, in input order: the Convex sink turns any answer whose
                // results do not match the records one for one into a retry, the local sink
                // makes one per record.
                for (p, record) in batch.iter().zip(&records) {
                    match record {
                        RecordOutcome::Refused { reason } => dead += self.refuse(p, reason).await?,
                        RecordOutcome::Accepted => to_ack.push(p.clone()),
                    }
                }
                // One transaction for the whole batch; a superseded entry stays pending.
                let delivered = to_ack.len();
                self.outbox.ack_batch(&to_ack).await?;
                self.outbox.record_delivery(self.lane, now_ms())?;
                Ok(Step::Progress { delivered, dead })
            }
            Outcome::Rejected { reason } if batch.len() > 1 => {
                // Find the offending record(s): resend one by one; the refused ones go to the
                // dead letters, the others are delivered.
                tracing::debug!(%reason, "batch rejected; resending it record by record");
                Box::pin(self.probe(batch, "the batch was rejected")).await
            }
            Outcome::Rejected { reason } => {
                let dead = self.refuse(&batch[0], &reason).await?;
                Ok(Step::Progress { delivered: 0, dead })
            }
            Outcome::Retry { reason, .. } => {
                self.count_attempts(batch)?;
                self.outbox.record_error(self.lane, &reason)?;
                Ok(Step::Backoff { wait, reason })
            }
            Outcome::Unauthorized { reason } => {
                self.count_attempts(batch)?;
                self.outbox.record_error(self.lane, &reason)?;
                Ok(Step::Unauthorized { wait, reason })
            }
        }
    }

    /// Moves a record the sink refused for good to the dead-letter tree: one ERROR line, and
    /// `status`'s last error.
    /// Returns how many records moved (0 when a newer version was committed meanwhile: that
    /// one stays pending and gets its own chance).
    async fn refuse(&self, p: &Pending, reason: &str) -> Result<usize, QueueError> {
        if self.outbox.dead_letter(p, reason).await? != DeadLetterOutcome::Moved {
            tracing::debug!(session_id = %p.session_id(), "a refused record was superseded; the newer version stays pending");
            return Ok(0);
        }
        tracing::error!(session_id = %p.session_id(), lane = %self.lane, reason = %reason, "record rejected by the sink; moved to dead letters (see `opencode-telemetry queue list`)");
        self.outbox
            .record_error(self.lane, &format!("rejected {}: {reason}", p.session_id()))?;
        Ok(1)
    }

    /// Applies what arrived on the reconfigure channel (`None`: the channel closed).
    fn on_reconfigure(&mut self, r: Option<Reconfigure>, open: &mut bool) {
        match r {
            Some(r) => self.reconfigure(r),
            None => *open = false,
        }
    }

    /// Counts a failed attempt on each record of the batch (shown by `queue list`).
    fn count_attempts(&self, batch: &[Pending]) -> Result<(), QueueError> {
        for p in batch {
            self.outbox.record_attempt(p)?;
        }
        Ok(())
    }

    /// Applies new delivery settings (between two requests).
    pub fn reconfigure(&mut self, r: Reconfigure) {
        self.sink = r.sink;
        self.pacer = r.pacer;
        self.in_flight_limit = r.in_flight_limit;
    }

    /// Drains until cancelled: sends while the outbox has records, then sleeps until `wake`
    /// is notified (new records), the pacer allows the next retry, or new settings arrive on
    /// `reconfigure` (applied at once when the sender is waiting, else after the request in
    /// flight).
    ///
    /// # Errors
    /// [`QueueError`]: a storage error; the daemon exits and its service manager restarts it.
    pub async fn run(
        mut self,
        wake: Arc<Notify>,
        cancel: CancellationToken,
        mut reconfigure: mpsc::UnboundedReceiver<Reconfigure>,
    ) -> Result<(), QueueError> {
        let mut logged_unauthorized = false;
        let mut reconfigure_open = true;
        loop {
            if cancel.is_cancelled() {
                return Ok(());
            }
            while let Ok(r) = reconfigure.try_recv() {
                self.reconfigure(r);
                logged_unauthorized = false;
            }
            let ready_in = self.pacer.until_ready();
            if !ready_in.is_zero() {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(ready_in) => {}
                    r = reconfigure.recv(), if reconfigure_open => {
                        self.on_reconfigure(r, &mut reconfigure_open);
                        logged_unauthorized = false;
                    }
                }
                continue;
            }
            let step = {
                let in_flight_limit = self.in_flight_limit;
                let step = self.step();
                tokio::pin!(step);
                tokio::select! {
                    step = &mut step => step?,
                    _ = cancel.cancelled() => {
                        // Let the request in flight finish (its acknowledgement saves a
                        // duplicate after the restart), within the shutdown grace period.
                        let _ = tokio::time::timeout(in_flight_limit, &mut step).await;
                        return Ok(());
                    }
                }
            };
            match step {
                Step::Idle => {
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        _ = wake.notified() => {}
                        r = reconfigure.recv(), if reconfigure_open => {
                            self.on_reconfigure(r, &mut reconfigure_open);
                            logged_unauthorized = false;
                        }
                    }
                }
                Step::Progress { delivered, dead } => {
                    logged_unauthorized = false;
                    tracing::debug!(lane = %self.lane, delivered, dead, "delivered a batch");
                }
                Step::Backoff { wait, reason } => {
                    tracing::warn!(lane = %self.lane, reason = %reason, retry_in_ms = wait.as_millis() as u64, "delivery failed; will retry");
                }
                Step::Unauthorized { wait, reason } => {
                    if !logged_unauthorized {
                        tracing::error!(reason = %reason, retry_in_ms = wait.as_millis() as u64,
                            "the Convex deployment refused the ingest token; sending is paused and the queue is kept. \
                             The token (stored by `opencode-telemetry login`, or OPENCODE_TELEMETRY_INGEST_TOKEN, or \
                             convex.ingest_token) must be a device token of the deployment that is not revoked \
                             (npx convex run devices:list; devices:create makes one, then `opencode-telemetry login` \
                             and a restart), or the legacy INGEST_TOKEN with ALLOW_LEGACY_INGEST_TOKEN=1 set there");
                        logged_unauthorized = true;
                    }
                }
            }
        }
    }
}

/// What a probe that stopped early returns: its progress if it made any, else the step of the
/// failure that stopped it (so the backoff applies).
fn progress_or(delivered: usize, dead: usize, step: Step) -> Step {
    if delivered + dead == 0 {
        step
    } else {
        Step::Progress { delivered, dead }
    }
}
