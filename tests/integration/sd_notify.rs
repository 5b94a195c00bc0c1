//! The real daemon speaks systemd's notification protocol (`sd_notify(3)`) to a real Unix
//! datagram socket named by `NOTIFY_SOCKET`, as systemd's manager does for a `Type=notify` unit.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::support::daemon::Daemon;
use crate::support::{command, Scratch};

/// A bound notify socket and the messages received so far (one string per datagram).
struct NotifySocket {
    sock: UnixDatagram,
    path: std::path::PathBuf,
    received: Vec<String>,
}

impl NotifySocket {
    fn bind(scratch: &Scratch) -> NotifySocket {
        let path = scratch.path("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        NotifySocket {
            sock,
            path,
            received: Vec::new(),
        }
    }

    /// Receives until `done(received)` holds, at most `secs` seconds; panics with what arrived
    /// and the daemon's log otherwise.
    fn wait_until(
        &mut self,
        daemon: &Daemon,
        secs: u64,
        what: &str,
        done: impl Fn(&[String]) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut buf = [0u8; 4096];
        while !done(&self.received) {
            assert!(
                Instant::now() < deadline,
                "no {what} within {secs} s; received {:?}\n{}",
                self.received,
                daemon.output()
            );
            match self.sock.recv(&mut buf) {
                Ok(n) => self
                    .received
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("recv on the notify socket: {e}"),
            }
        }
    }
}

/// Whether a datagram holds the assignment `line` (e.g. `READY=1`).
fn has(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

fn count(received: &[String], line: &str) -> usize {
    received.iter().filter(|m| has(m, line)).count()
}

/// `run` on the fixture DB with a poll interval of 10 minutes and `NOTIFY_SOCKET` set.
fn start(scratch: &Scratch, notify: &NotifySocket, watchdog_usec: Option<&str>) -> Daemon {
    let config = scratch.write_config("[source]\npoll_interval_ms = 600000\n");
    let db = scratch.copy_fixture_db();
    let mut cmd = command(scratch);
    cmd.env("RUST_LOG", "info")
        .env("NOTIFY_SOCKET", &notify.path)
        .arg("--config")
        .arg(&config)
        .arg("--db")
        .arg(&db)
        .arg("run");
    if let Some(usec) = watchdog_usec {
        cmd.env("WATCHDOG_USEC", usec);
    }
    Daemon::spawn(cmd, &scratch.path("daemon.log"))
}

#[test]
fn ready_then_watchdog_pings_then_stopping_on_sigterm() {
    let scratch = Scratch::new();
    let mut notify = NotifySocket::bind(&scratch);
    // WatchdogSec=0.4s: a ping is due every 200 ms.
    let mut daemon = start(&scratch, &notify, Some("400000"));

    notify.wait_until(&daemon, 60, "READY=1", |r| count(r, "READY=1") == 1);
    let first = &notify.received[0];
    assert!(has(first, "READY=1"), "READY=1 comes first: {first:?}");
    let status = first.lines().find_map(|l| l.strip_prefix("STATUS="));
    assert!(
        status.is_some_and(|s| s.contains("opencode.db")),
        "READY=1 carries a STATUS= naming the database: {first:?}"
    );

    // With a 10-minute poll interval only the watchdog schedule can produce repeated pings:
    // the loop pings on the watchdog's clock, not once per poll.
    notify.wait_until(&daemon, 60, "3 WATCHDOG=1 pings", |r| {
        count(r, "WATCHDOG=1") >= 3
    });
    assert!(
        !notify.received.iter().any(|m| has(m, "STOPPING=1")),
        "no STOPPING=1 before SIGTERM: {:?}",
        notify.received
    );

    let (status, _) = daemon.terminate(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", daemon.output());
    notify.wait_until(&daemon, 5, "STOPPING=1", |r| count(r, "STOPPING=1") == 1);
    assert_eq!(
        count(&notify.received, "READY=1"),
        1,
        "{:?}",
        notify.received
    );
}

#[test]
fn without_a_watchdog_there_are_no_pings() {
    let scratch = Scratch::new();
    let mut notify = NotifySocket::bind(&scratch);
    let mut daemon = start(&scratch, &notify, None);
    notify.wait_until(&daemon, 60, "READY=1", |r| count(r, "READY=1") == 1);
    // Let the loop run for a while (first poll included) before stopping it.
    std::thread::sleep(Duration::from_millis(1500));
    let (status, _) = daemon.terminate(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", daemon.output());
    notify.wait_until(&daemon, 5, "STOPPING=1", |r| count(r, "STOPPING=1") == 1);
    assert_eq!(
        count(&notify.received, "WATCHDOG=1"),
        0,
        "{:?}",
        notify.received
    );
    assert_eq!(notify.received.len(), 2, "{:?}", notify.received);
}

/// The first pass over a large history may outlast the watchdog period; the daemon keeps
/// pinging during it (afterwards a stuck tick stops the pings). 3,000 generated sessions take
/// seconds to read in a debug build: pings must keep coming on the watchdog's clock until the
/// first pass is done (all its chunks), instead of one ping before the pass and silence until
/// it ends.
#[test]
fn the_watchdog_is_pinged_during_a_long_first_pass() {
    let scratch = Scratch::new();
    let mut notify = NotifySocket::bind(&scratch);
    let db = scratch.path("oc/opencode.db");
    drop(crate::support::gen_db::GenDb::create(&db, 3000));
    let config = scratch.write_config("[source]\npoll_interval_ms = 600000\n");
    let mut cmd = command(&scratch);
    cmd.env("RUST_LOG", "info")
        .env("NOTIFY_SOCKET", &notify.path)
        // WatchdogSec=0.2s: a ping is due every 100 ms.
        .env("WATCHDOG_USEC", "200000")
        .arg("--config")
        .arg(&config)
        .arg("--db")
        .arg(&db)
        .arg("run");
    let mut daemon = Daemon::spawn(cmd, &scratch.path("daemon.log"));
    notify.wait_until(&daemon, 60, "READY=1", |r| count(r, "READY=1") == 1);
    let ready_at = Instant::now();
    // Receive until the first pass is done; count the pings that came meanwhile.
    let mut pings_during_pass = 0;
    let mut buf = [0u8; 4096];
    let deadline = ready_at + Duration::from_secs(240);
    while !daemon.output().contains("the first pass is done") {
        assert!(
            Instant::now() < deadline,
            "the first pass did not end within 240 s\n{}",
            daemon.output()
        );
        if let Ok(n) = notify.sock.recv(&mut buf) {
            if has(&String::from_utf8_lossy(&buf[..n]), "WATCHDOG=1") {
                pings_during_pass += 1;
            }
        }
    }
    let pass = ready_at.elapsed();
    // On the watchdog's clock there are about pass / 100 ms pings; ask for a quarter of that
    // (a loaded machine delays them), and at least 3.
    let expected = (pass.as_millis() / 400).max(3) as usize;
    assert!(
        pass >= Duration::from_millis(500),
        "the first pass took only {pass:?}: too short to show anything"
    );
    assert!(
        pings_during_pass >= expected,
        "{pings_during_pass} pings during a {pass:?} first pass (expected ≥ {expected})"
    );
    let (status, _) = daemon.terminate(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", daemon.output());
}
