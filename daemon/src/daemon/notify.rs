//! systemd's service notification protocol (`sd_notify(3)`) for `run`, through the `sd-notify`
//! crate. The unit is `Type=notify` with `WatchdogSec=`; every message is a datagram to the Unix
//! socket named by `NOTIFY_SOCKET`.
//!
//! - `READY=1` (plus `STATUS=`): sent once the outbox is open (its lock taken) and the sink is set
//!   up, *before* the first poll. The first poll of a large database can take seconds and the
//!   database may not exist yet (the daemon then waits for it); neither is a start failure, so
//!   neither may hold `systemctl start` or run into `TimeoutStartSec=`.
//! - `WATCHDOG=1`: sent from the poll loop itself (not from a timer task of its own) every half
//!   of the watchdog interval systemd passes in `WATCHDOG_USEC` (`WatchdogSec=`), whatever
//!   `source.poll_interval_ms` is. A poll that hangs stops the pings, and systemd then kills the
//!   process (SIGABRT) and `Restart=on-failure` starts it again. The one exception is the first
//!   poll that reads the database (the pass over the whole history, which can outlast
//!   `WatchdogSec` on a large database): the loop keeps pinging while it runs.
//! - `STOPPING=1` (plus `STATUS=`): sent when shutdown begins, before the outbox is flushed.
//!
//! Without `NOTIFY_SOCKET` (launchd, a shell) every call does nothing; without `WATCHDOG_USEC`
//! (or with `WATCHDOG_PID` naming another process) no pings are sent. A failed send is logged at
//! `debug` and otherwise ignored: the daemon's work does not depend on the service manager.

use std::time::Duration;

use sd_notify::NotifyState;

/// The daemon's side of the protocol; see the module docs.
pub struct Notifier {
    /// Fires every half watchdog interval; `None` when systemd asked for no watchdog.
    watchdog: Option<tokio::time::Interval>,
}

impl Notifier {
    /// Reads `WATCHDOG_USEC` / `WATCHDOG_PID` (the variables stay set). Call inside the tokio
    /// runtime.
    pub fn from_env() -> Notifier {
        let watchdog = sd_notify::watchdog_enabled()
            .filter(|d| !d.is_zero())
            .map(|d| {
                let period = (d / 2).max(Duration::from_millis(1));
                tracing::debug!(
                    watchdog_ms = d.as_millis() as u64,
                    ping_every_ms = period.as_millis() as u64,
                    "systemd watchdog enabled"
                );
                let mut interval = tokio::time::interval(period);
                // After a slow poll one ping is enough; no burst of catch-up pings.
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                interval
            });
        Notifier { watchdog }
    }

    /// `READY=1` with `STATUS=<status>`.
    pub fn ready(&self, status: &str) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `STOPPING=1` with `STATUS=<status>`.
    pub fn stopping(&self, status: &str) {
        send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// Waits until a watchdog ping is due, then sends `WATCHDOG=1`. Never resolves when the
    /// watchdog is off. Cancel-safe (meant for a `select!` in the poll loop): a cancelled wait
    /// sends nothing.
    pub async fn watchdog(&mut self) {
        match &mut self.watchdog {
            Some(interval) => {
                interval.tick().await;
                send(&[NotifyState::Watchdog]);
            }
            None => std::future::pending().await,
        }
    }
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "cannot notify the service manager");
    }
}
