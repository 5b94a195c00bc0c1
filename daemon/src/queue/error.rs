//! [`QueueError`]: why an outbox operation failed.

use std::path::PathBuf;

/// Why an outbox operation failed. Every variant names the directory or the key involved.
///
/// sled errors are sticky: after one storage error every later write of the same `Db` fails too,
/// so [`QueueError::is_permanent`] is true for them and the service exits non-zero to be
/// restarted by its service manager (systemd `Restart=on-failure`, launchd `KeepAlive`). The
/// restart reopens the outbox, which verifies it and quarantines it if it is corrupt.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Another process (or another `Outbox` in this process) holds the outbox's lock.
    #[error("another opencode-telemetry is using {}: stop it first", dir.display())]
    Locked {
        /// The outbox directory (`<data_dir>/queue`).
        dir: PathBuf,
    },
    /// The data directory or the outbox directory cannot be created.
    #[error("cannot create the outbox directory {}: {source}", dir.display())]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// sled could not open (or verify) the outbox for a reason that is not corruption (for
    /// example permission denied or no space left), or a freshly rebuilt outbox failed too.
    #[error("cannot open the outbox at {}: {source}", dir.display())]
    Open {
        /// The outbox directory.
        dir: PathBuf,
        /// sled's error.
        source: sled::Error,
    },
    /// The outbox was corrupt, was moved aside, and the fresh one that replaced it cannot be
    /// used either (the filesystem itself is likely at fault). Not retried, so no crash loop
    /// within one start.
    #[error("the outbox at {} is still unusable after it was rebuilt: {cause}", dir.display())]
    RebuildFailed {
        /// The outbox directory.
        dir: PathBuf,
        /// What failed in the fresh outbox.
        cause: String,
    },
    /// The outbox is corrupt and could not be moved aside.
    #[error("the outbox at {} is corrupt ({cause}) and cannot be moved aside to {}: {source}", dir.display(), to.display())]
    Quarantine {
        /// The outbox directory.
        dir: PathBuf,
        /// Where it was to be moved.
        to: PathBuf,
        /// What was found corrupt.
        cause: String,
        /// The rename error.
        source: std::io::Error,
    },
    /// The outbox was written by a newer opencode-telemetry with a layout this one does not
    /// know. It is left untouched.
    #[error("the outbox at {} has layout {found} but this opencode-telemetry knows only up to {known}: upgrade it, or move the directory away", dir.display())]
    NewerLayout {
        /// The outbox directory.
        dir: PathBuf,
        /// Layout found in `meta/layout`.
        found: u64,
        /// Newest layout this build knows.
        known: u64,
    },
    /// A sled read, write, transaction or flush failed. Sticky: the process should exit.
    #[error("outbox storage failed in {} during {op}: {source}", dir.display())]
    Storage {
        /// The outbox directory.
        dir: PathBuf,
        /// The operation (`commit`, `ack`, `flush`, …).
        op: &'static str,
        /// sled's error.
        source: sled::Error,
    },
    /// An envelope could not be encoded (not expected to happen: headers are plain strings and
    /// integers).
    #[error("cannot encode the outbox entry for session {session_id:?}: {source}")]
    Encode {
        /// The session id.
        session_id: String,
        /// The serializer's error.
        source: serde_json::Error,
    },
    /// A record given to [`super::Outbox::commit`] is not acceptable; nothing was written.
    #[error("invalid record for session {session_id:?}: {reason}")]
    InvalidRecord {
        /// The session id (possibly empty).
        session_id: String,
        /// What is wrong.
        reason: &'static str,
    },
}

impl QueueError {
    /// True when the outbox cannot be used any more in this process (the service should exit
    /// non-zero and let its service manager restart it): lock held, open or storage failures,
    /// corruption that could not be quarantined, a newer layout. False when only the given input
    /// was bad and the outbox itself is fine ([`QueueError::InvalidRecord`],
    /// [`QueueError::Encode`]).
    pub fn is_permanent(&self) -> bool {
        match self {
            QueueError::Locked { .. }
            | QueueError::CreateDir { .. }
            | QueueError::Open { .. }
            | QueueError::RebuildFailed { .. }
            | QueueError::Quarantine { .. }
            | QueueError::NewerLayout { .. }
            | QueueError::Storage { .. } => true,
            QueueError::Encode { .. } | QueueError::InvalidRecord { .. } => false,
        }
    }

    /// True when the outbox's place itself is unusable in a way no restart can fix: its
    /// directory cannot be created (the data dir is a file, permission denied, a read-only file
    /// system) or cannot be opened for permission reasons. The user must change `data_dir` or
    /// its permissions; the CLI exits 78 (EX_CONFIG), which the systemd unit does not restart.
    pub fn is_unusable_location(&self) -> bool {
        use std::io::ErrorKind;
        let unfixable = |kind: ErrorKind| {
            matches!(
                kind,
                ErrorKind::PermissionDenied
                    | ErrorKind::ReadOnlyFilesystem
                    | ErrorKind::NotADirectory
                    | ErrorKind::AlreadyExists
            )
        };
        match self {
            QueueError::CreateDir { source, .. } => unfixable(source.kind()),
            QueueError::Open {
                source: sled::Error::Io(io),
                ..
            } => unfixable(io.kind()),
            QueueError::Quarantine { source, .. } => unfixable(source.kind()),
            _ => false,
        }
    }
}
