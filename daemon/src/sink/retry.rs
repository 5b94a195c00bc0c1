//! When to send next: [`RetryPolicy`] (the exponential sequence) and [`Pacer`] (one gate shared
//! by all sending).
//!
//! The delay after the n-th consecutive failure (n = 1, 2, …) is
//!
//! ```text
//! d_n    = min(cap, initial · 2^(n-1))              exponential, from the `backoff` crate
//! wait_n = uniform[0, d_n]                          full jitter (our own, injectable RNG)
//! wait_n = max(wait_n, min(retry_after, cap))       when the server sent Retry-After
//! ```
//!
//! `initial` is `convex.initial_backoff_ms`, `cap` is `convex.max_backoff_secs`. The `backoff`
//! crate's own randomisation is off (`randomization_factor = 0`) and it never gives up
//! (`max_elapsed_time = None`); its `retry_after` support is not used because it bypasses the cap
//! (see `reference/reliability.md` §3). Sending never stops: after any number of failures the
//! wait stays at most `cap`. A success resets the sequence.
//!
//! `Unauthorized` is not a backoff: [`Pacer::pause_unauthorized`] waits a fixed `cap` and then
//! lets one attempt through, so a token fixed on the deployment resumes delivery without a
//! restart.
//!
//! Time is [`tokio::time::Instant`] (monotonic, and virtual under `tokio::time::pause()`).

use std::fmt;
use std::time::Duration;

use backoff::backoff::Backoff as _;
use backoff::{ExponentialBackoff, ExponentialBackoffBuilder};
use rand::{RngCore, SeedableRng};
use tokio::time::Instant;

use crate::config::ConvexConfig;
use crate::sink::Outcome;

impl From<&ConvexConfig> for RetryPolicy {
    /// From `convex.initial_backoff_ms` (ms) and `convex.max_backoff_secs` (s). The local file
    /// sink is paced by the same section: its failures are the disk's, retried the same way.
    fn from(cfg: &ConvexConfig) -> RetryPolicy {
        RetryPolicy::new(
            Duration::from_millis(cfg.initial_backoff_ms),
            Duration::from_secs(cfg.max_backoff_secs),
        )
    }
}

/// The exponential part of the retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    initial: Duration,
    cap: Duration,
}

impl RetryPolicy {
    /// Largest cap accepted (7 days); longer ones are clamped to it.
    pub const MAX_CAP: Duration = Duration::from_secs(7 * 24 * 3600);
    /// Smallest first delay (1 ms), so a zero never makes a busy loop.
    pub const MIN_INITIAL: Duration = Duration::from_millis(1);

    /// `initial`: the first delay; `cap`: the largest delay, also the cap of `Retry-After` and
    /// the pause after `Unauthorized`. The cap is clamped to `MIN_INITIAL..=MAX_CAP` and the
    /// first delay to `MIN_INITIAL..=cap`.
    pub fn new(initial: Duration, cap: Duration) -> RetryPolicy {
        let cap = cap.clamp(Self::MIN_INITIAL, Self::MAX_CAP);
        RetryPolicy {
            initial: initial.clamp(Self::MIN_INITIAL, cap),
            cap,
        }
    }

    /// The first delay.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// The largest delay.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// The un-jittered sequence: multiplier 2, no randomisation, capped, never giving up.
    pub fn exponential(&self) -> ExponentialBackoff {
        ExponentialBackoffBuilder::new()
            .with_initial_interval(self.initial)
            .with_multiplier(2.0)
            .with_randomization_factor(0.0)
            .with_max_interval(self.cap)
            .with_max_elapsed_time(None)
            .build()
    }
}

/// A uniformly random duration in `[0, d]`, from one random `u64` (`0` gives zero,
/// `u64::MAX` gives `d`).
pub fn full_jitter(d: Duration, random: u64) -> Duration {
    let nanos = d.as_nanos() * u128::from(random) / u128::from(u64::MAX);
    // nanos ≤ d.as_nanos(), which fits in a Duration.
    Duration::new(
        u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX),
        u32::try_from(nanos % 1_000_000_000).unwrap_or(0),
    )
}

/// The gate all sending goes through: one "next allowed send" instant for the whole daemon,
/// so a failure (or a server's `Retry-After`) pauses every record, not just one.
///
/// Use: before each send wait until [`Pacer::ready_at`] (or [`Pacer::until_ready`] is zero),
/// then feed the outcome to [`Pacer::observe`] (or the individual methods). Keep it behind a
/// mutex when shared; it never holds the lock across an await.
pub struct Pacer {
    policy: RetryPolicy,
    exponential: ExponentialBackoff,
    rng: Box<dyn RngCore + Send + Sync>,
    next_allowed: Option<Instant>,
    unauthorized: bool,
    failures: u64,
}

impl fmt::Debug for Pacer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pacer")
            .field("policy", &self.policy)
            .field("until_ready", &self.until_ready())
            .field("unauthorized", &self.unauthorized)
            .field("failures", &self.failures)
            .finish()
    }
}

impl Pacer {
    /// A pacer with an OS-seeded jitter RNG, ready to send.
    pub fn new(policy: RetryPolicy) -> Pacer {
        Pacer::with_rng(policy, rand::rngs::StdRng::from_os_rng())
    }

    /// A pacer with the given jitter RNG (tests inject a seeded or constant one).
    pub fn with_rng(policy: RetryPolicy, rng: impl RngCore + Send + Sync + 'static) -> Pacer {
        Pacer {
            policy,
            exponential: policy.exponential(),
            rng: Box::new(rng),
            next_allowed: None,
            unauthorized: false,
            failures: 0,
        }
    }

    /// The policy.
    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    /// Records a transient failure and returns the wait before the next send: full jitter over
    /// the next exponential delay, at least `retry_after` clamped to the cap. The gate only
    /// moves later: a shorter wait never cuts an earlier, longer one (e.g. a `Retry-After`).
    pub fn on_failure(&mut self, retry_after: Option<Duration>) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.unauthorized = false;
        let d = self
            .exponential
            .next_backoff()
            .unwrap_or(self.policy.cap)
            .min(self.policy.cap);
        let mut wait = full_jitter(d, self.rng.next_u64());
        if let Some(after) = retry_after {
            wait = wait.max(after.min(self.policy.cap));
        }
        self.push_gate(wait);
        self.until_ready()
    }

    /// Records a success (the server answered with a verdict): the exponential sequence
    /// restarts, the gate opens and an `Unauthorized` pause ends.
    pub fn on_success(&mut self) {
        self.exponential.reset();
        self.next_allowed = None;
        self.unauthorized = false;
        self.failures = 0;
    }

    /// Records `Unauthorized`: sending waits a fixed `cap`, then one attempt may go (which
    /// pauses again unless the token was fixed). Returns the wait.
    pub fn pause_unauthorized(&mut self) -> Duration {
        self.unauthorized = true;
        self.push_gate(self.policy.cap);
        self.until_ready()
    }

    /// Feeds an outcome — the one mapping from outcomes to waits, used by the sender:
    /// `Delivered` and `Rejected` → [`Pacer::on_success`] (the sink answered with a verdict; a
    /// rejected batch is split and resent at once), `Retry` → [`Pacer::on_failure`] with its
    /// `after`, `Unauthorized` → [`Pacer::pause_unauthorized`]. Returns the wait.
    pub fn observe(&mut self, outcome: &Outcome) -> Duration {
        match outcome {
            Outcome::Delivered(_) | Outcome::Rejected { .. } => {
                self.on_success();
                Duration::ZERO
            }
            Outcome::Retry { after, .. } => self.on_failure(*after),
            Outcome::Unauthorized { .. } => self.pause_unauthorized(),
        }
    }

    /// How long until sending is allowed (zero when it is).
    pub fn until_ready(&self) -> Duration {
        self.next_allowed
            .map(|at| at.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::ZERO)
    }

    /// When sending is allowed again (`None`: now). For `tokio::time::sleep_until`.
    pub fn ready_at(&self) -> Option<Instant> {
        self.next_allowed
    }

    /// True while the last outcome was `Unauthorized`.
    pub fn is_unauthorized(&self) -> bool {
        self.unauthorized
    }

    /// Consecutive transient failures since the last success.
    pub fn consecutive_failures(&self) -> u64 {
        self.failures
    }

    fn push_gate(&mut self, wait: Duration) {
        let now = Instant::now();
        // wait ≤ MAX_CAP (7 days), so this cannot overflow in practice; stay safe anyway.
        let at = now.checked_add(wait).unwrap_or(now);
        self.next_allowed = Some(match self.next_allowed {
            Some(current) if current > at => current,
            _ => at,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;

    /// An RNG that always returns the same value (`u64::MAX`: no jitter; 0: zero wait).
    struct Constant(u64);
    impl RngCore for Constant {
        fn next_u32(&mut self) -> u32 {
            self.0 as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            dst.fill(self.0 as u8);
        }
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;
    const SECS: fn(u64) -> Duration = Duration::from_secs;

    fn policy() -> RetryPolicy {
        RetryPolicy::new(MS(1000), SECS(60))
    }

    #[tokio::test(start_paused = true)]
    async fn the_sequence_doubles_up_to_the_cap() {
        let mut p = Pacer::with_rng(policy(), Constant(u64::MAX));
        let waits: Vec<Duration> = (0..10).map(|_| p.on_failure(None)).collect();
        let secs = [1, 2, 4, 8, 16, 32, 60, 60, 60, 60];
        assert_eq!(waits, secs.map(SECS));
        assert_eq!(p.consecutive_failures(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn the_backoff_crate_is_configured_to_never_give_up() {
        let e = policy().exponential();
        assert_eq!(e.max_elapsed_time, None);
        assert_eq!(e.randomization_factor, 0.0);
        assert_eq!(e.multiplier, 2.0);
        assert_eq!(e.initial_interval, MS(1000));
        assert_eq!(e.max_interval, SECS(60));
    }

    #[tokio::test(start_paused = true)]
    async fn it_never_gives_up_and_stays_capped() {
        let mut p = Pacer::with_rng(policy(), StdRng::seed_from_u64(7));
        for i in 0..20_000 {
            let wait = p.on_failure(None);
            assert!(wait <= SECS(60), "failure {i}: {wait:?}");
            tokio::time::advance(wait).await;
            assert_eq!(p.until_ready(), Duration::ZERO);
        }
        // Hours of (virtual) outage later, the sequence is still at the cap, not exhausted.
        let mut max = Pacer::with_rng(policy(), Constant(u64::MAX));
        for _ in 0..10_000 {
            max.on_failure(None);
        }
        tokio::time::advance(SECS(3600)).await;
        assert_eq!(max.on_failure(None), SECS(60));
    }

    #[tokio::test(start_paused = true)]
    async fn full_jitter_is_uniform_within_zero_and_d() {
        assert_eq!(full_jitter(SECS(8), 0), Duration::ZERO);
        assert_eq!(full_jitter(SECS(8), u64::MAX), SECS(8));
        assert_eq!(
            full_jitter(SECS(8), u64::MAX / 2),
            MS(4000) - Duration::from_nanos(1)
        );
        assert_eq!(
            full_jitter(RetryPolicy::MAX_CAP, u64::MAX),
            RetryPolicy::MAX_CAP
        );

        // Failure n draws from [0, d_n]: after 6 failures d = 32 s.
        let mut rng = StdRng::seed_from_u64(42);
        let d = SECS(32);
        let samples: Vec<Duration> = (0..2000)
            .map(|_| {
                let mut p = Pacer::with_rng(policy(), StdRng::seed_from_u64(rng.next_u64()));
                (0..5).for_each(|_| {
                    p.on_failure(None);
                    p.on_success_keep_sequence_for_test();
                });
                p.on_failure(None)
            })
            .collect();
        assert!(samples.iter().all(|s| *s <= d));
        let below_quarter = samples.iter().filter(|s| **s < d / 4).count();
        let above_three_quarters = samples.iter().filter(|s| **s > d * 3 / 4).count();
        // Uniform: about 500 each; far from what a fixed or "equal jitter" delay would give.
        assert!((350..650).contains(&below_quarter), "{below_quarter}");
        assert!(
            (350..650).contains(&above_three_quarters),
            "{above_three_quarters}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_sequence_and_opens_the_gate() {
        let mut p = Pacer::with_rng(policy(), Constant(u64::MAX));
        for _ in 0..5 {
            p.on_failure(None);
        }
        assert_eq!(p.until_ready(), SECS(16));
        p.on_success();
        assert_eq!(p.until_ready(), Duration::ZERO);
        assert_eq!(p.ready_at(), None);
        assert_eq!(p.consecutive_failures(), 0);
        assert_eq!(p.on_failure(None), SECS(1));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_dominates_a_shorter_backoff() {
        let mut p = Pacer::with_rng(policy(), Constant(0)); // jitter always picks 0
        assert_eq!(p.on_failure(Some(SECS(7))), SECS(7));
        tokio::time::advance(SECS(3)).await;
        assert_eq!(p.until_ready(), SECS(4));
        tokio::time::advance(SECS(4)).await;
        assert_eq!(p.until_ready(), Duration::ZERO);
        // A shorter Retry-After does not shorten the jittered backoff.
        let mut p = Pacer::with_rng(policy(), Constant(u64::MAX));
        for _ in 0..3 {
            p.on_failure(None);
        }
        tokio::time::advance(SECS(10)).await;
        assert_eq!(p.on_failure(Some(SECS(1))), SECS(8));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_clamped_to_the_cap() {
        let mut p = Pacer::with_rng(policy(), Constant(0));
        assert_eq!(p.on_failure(Some(SECS(86_400))), SECS(60));
        let mut p = Pacer::with_rng(policy(), Constant(0));
        assert_eq!(p.on_failure(Some(Duration::MAX)), SECS(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_shorter_failure_never_cuts_a_pending_longer_wait() {
        let mut p = Pacer::with_rng(policy(), Constant(0));
        assert_eq!(p.on_failure(Some(SECS(50))), SECS(50));
        tokio::time::advance(SECS(10)).await;
        assert_eq!(p.on_failure(None), SECS(40));
    }

    #[tokio::test(start_paused = true)]
    async fn unauthorized_waits_the_cap_then_lets_one_attempt_through() {
        let mut p = Pacer::with_rng(policy(), Constant(u64::MAX));
        let outcome = Outcome::Unauthorized {
            reason: "http 401".into(),
        };
        assert_eq!(p.observe(&outcome), SECS(60));
        assert!(p.is_unauthorized());
        tokio::time::advance(SECS(59)).await;
        assert_eq!(p.until_ready(), SECS(1));
        tokio::time::advance(SECS(1)).await;
        assert_eq!(p.until_ready(), Duration::ZERO);
        // Still refused: another fixed pause, not a growing backoff.
        assert_eq!(p.observe(&outcome), SECS(60));
        tokio::time::advance(SECS(60)).await;
        // The token was fixed: delivery resumes.
        assert_eq!(p.observe(&Outcome::Delivered(vec![])), Duration::ZERO);
        assert!(!p.is_unauthorized());
        assert_eq!(p.until_ready(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn observe_maps_every_outcome() {
        let mut p = Pacer::with_rng(policy(), Constant(u64::MAX));
        let retry = Outcome::Retry {
            reason: "http 503".into(),
            after: Some(SECS(5)),
        };
        assert_eq!(p.observe(&retry), SECS(5)); // max(1 s, 5 s)
        assert_eq!(p.observe(&retry), SECS(5)); // the pending 5 s gate is kept: max(2 s, 5 s)
        let rejected = Outcome::Rejected {
            reason: "http 400".into(),
        };
        assert_eq!(p.observe(&rejected), Duration::ZERO);
        assert_eq!(p.consecutive_failures(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn policies_are_clamped() {
        let p = RetryPolicy::new(SECS(10), SECS(2));
        assert_eq!((p.initial(), p.cap()), (SECS(2), SECS(2)));
        let p = RetryPolicy::new(Duration::ZERO, SECS(u64::MAX));
        assert_eq!((p.initial(), p.cap()), (MS(1), RetryPolicy::MAX_CAP));
        let mut pacer = Pacer::with_rng(p, Constant(u64::MAX));
        for _ in 0..100 {
            pacer.on_failure(Some(Duration::MAX));
        }
        assert_eq!(pacer.until_ready(), RetryPolicy::MAX_CAP);
        let cfg = ConvexConfig::default();
        let p = RetryPolicy::from(&cfg);
        assert_eq!((p.initial(), p.cap()), (MS(1000), SECS(300)));
        // A new pacer with the OS RNG starts open.
        assert_eq!(Pacer::new(p).until_ready(), Duration::ZERO);
    }

    impl Pacer {
        /// Opens the gate without resetting the sequence (to sample the n-th delay).
        fn on_success_keep_sequence_for_test(&mut self) {
            self.next_allowed = None;
        }
    }
}
