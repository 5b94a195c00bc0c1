//! The daemon's clock, in the unit OpenCode stores times in (epoch milliseconds).
//!
//! It is the wall clock, made safe for timers: [`now_ms`] never goes backwards, and after the
//! wall clock steps back (NTP, a manual change, dual boot) it keeps advancing at the rate of the
//! monotonic clock, so a debounce window or a stale timer that spans the step ends on time
//! instead of an hour later. Forward jumps (a suspend and resume, a forward correction) are
//! followed at once. The rule, applied at every reading:
//!
//! `now = max(previous now + monotonic time elapsed since it, wall clock now)`
//!
//! After a step back of `d`, the daemon's time stays up to `d` ahead of the wall clock until it
//! restarts. Records carry a [`revision`](crate::export::SessionExport::revision), ordered
//! independently of the wall clock across restarts too.

use std::sync::Mutex;
use std::time::Instant;

/// One reading: the time handed out and the monotonic instant it was taken at.
#[derive(Debug, Clone, Copy)]
struct Reading {
    now_ms: i64,
    at: Instant,
}

impl Reading {
    /// The next time to hand out, `elapsed_ms` of monotonic time after `self`, when the wall
    /// clock says `wall_ms`.
    fn next(previous: Option<i64>, elapsed_ms: i64, wall_ms: i64) -> i64 {
        match previous {
            Some(prev) => prev.saturating_add(elapsed_ms.max(0)).max(wall_ms),
            None => wall_ms,
        }
    }
}

static LAST: Mutex<Option<Reading>> = Mutex::new(None);

/// The wall clock now (0 if the system clock is before 1970).
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Now, in epoch milliseconds: the wall clock, never going backwards (see the module docs).
pub fn now_ms() -> i64 {
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    let at = Instant::now();
    let elapsed = last
        .map(|r| at.saturating_duration_since(r.at).as_millis() as i64)
        .unwrap_or(0);
    let now_ms = Reading::next(last.map(|r| r.now_ms), elapsed, wall_ms());
    *last = Some(Reading { now_ms, at });
    now_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule, case by case: previous time handed out, monotonic ms since, the wall clock →
    /// the time handed out.
    #[test]
    fn the_clock_follows_the_wall_forward_and_the_monotonic_rate_after_a_step_back() {
        let h = 3_600_000;
        for (what, previous, elapsed, wall, expected) in [
            ("the first reading is the wall clock", None, 0, 5_000, 5_000),
            ("in step with the wall", Some(5_000), 100, 5_100, 5_100),
            (
                "the wall a little behind (drift)",
                Some(5_000),
                100,
                5_090,
                5_100,
            ),
            (
                "a step back of an hour",
                Some(10 * h),
                500,
                9 * h + 500,
                10 * h + 500,
            ),
            (
                "still after it, at the monotonic rate",
                Some(10 * h + 500),
                2_000,
                9 * h + 2_500,
                10 * h + 2_500,
            ),
            (
                "a suspend: the wall jumps ahead",
                Some(10 * h),
                10,
                18 * h,
                18 * h,
            ),
            ("a forward step", Some(5_000), 100, 65_000, 65_000),
            ("no monotonic time passed", Some(5_000), 0, 4_000, 5_000),
        ] {
            assert_eq!(Reading::next(previous, elapsed, wall), expected, "{what}");
        }
    }

    #[test]
    fn now_never_goes_backwards() {
        let mut prev = now_ms();
        for _ in 0..1000 {
            let n = now_ms();
            assert!(n >= prev);
            prev = n;
        }
    }
}
