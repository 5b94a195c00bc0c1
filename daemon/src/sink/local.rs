//! The embedded file sink: records appended to an NDJSON file, one per line.
//!
//! Guarantees:
//! - Each record is written as its JSON text exactly, followed by `\n` (a line break inside a
//!   record, only possible as insignificant whitespace in valid JSON, becomes a space, so a
//!   record is always one line).
//! - A batch is reported [`Outcome::Delivered`] only after `write_all` and `sync_data`
//!   returned; every record is [`RecordOutcome::Accepted`]. On a write or sync error the file is
//!   cut back to its length before the batch (best effort) and the outcome is
//!   [`Outcome::Retry`].
//! - Batches are at most [`MAX_BATCH_RECORDS`] records and [`MAX_BATCH_BYTES`] (the sink's
//!   [`Limits`]): one batch is one buffered write, so this bounds the memory a send takes.
//! - The file is created with mode 0600 (unix) and its parent directories as needed; after
//!   creating it the directory is synced too, so the file survives a power loss.
//! - **Torn tail repair.** A crash during an append can leave a last line without its `\n`.
//!   That record was never reported delivered (the sync comes first), so it is still in the
//!   outbox and will be appended again. Every time the file is opened (at start and before each
//!   batch) a last line without `\n` is therefore **truncated** away, unless it is a complete
//!   JSON object (e.g. written by another tool without a final newline), which is kept and
//!   terminated with `\n`. Either way every line stays valid JSON. A last line longer than
//!   16 MiB is not touched: the file is probably not ours and the batch is retried.
//! - Appends from one process are serialised; one daemon per data dir is enforced elsewhere.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::LocalConfig;
use crate::sink::{parse_record, Limits, Outcome, RecordOutcome, Sink, SinkError};

/// Most records one append carries.
pub const MAX_BATCH_RECORDS: usize = 500;

/// Most bytes of records one append carries (a single larger record is still written alone).
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Longest torn last line the repair removes (bytes).
pub const MAX_TORN_TAIL: u64 = 16 * 1024 * 1024;

/// What opening the file did to its last line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailRepair {
    /// Empty, or ending in `\n`: nothing to do.
    Clean,
    /// The last line was a complete JSON object without `\n`; a `\n` was appended.
    NewlineAdded,
    /// The last line was a torn record; these many bytes were cut off.
    Truncated {
        /// Bytes removed (the torn line).
        bytes: u64,
    },
}

/// Appends records to an NDJSON file (`local.path`).
#[derive(Debug, Clone)]
pub struct LocalSink {
    path: PathBuf,
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    lock: Mutex<()>,
    synced: AtomicU64,
}

impl TryFrom<&LocalConfig> for LocalSink {
    type Error = SinkError;

    /// [`LocalSink::open`] on `local.path`.
    fn try_from(cfg: &LocalConfig) -> Result<LocalSink, SinkError> {
        LocalSink::open(cfg.path.clone())
    }
}

impl LocalSink {
    /// Creates the parent directories and the file (mode 0600) if needed and repairs a torn last
    /// line (see the module docs).
    ///
    /// # Errors
    /// [`SinkError::Local`] when the path is empty, or the directory or file cannot be created,
    /// opened or repaired.
    pub fn open(path: impl Into<PathBuf>) -> Result<LocalSink, SinkError> {
        let path = path.into();
        let err = |source: io::Error| SinkError::Local {
            path: path.clone(),
            source,
        };
        if path.as_os_str().is_empty() {
            return Err(err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "local.path is empty",
            )));
        }
        open_repaired(&path, MAX_TORN_TAIL).map_err(err)?;
        Ok(LocalSink {
            path,
            inner: Arc::default(),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Batches appended and synced so far by this sink (and its clones).
    pub fn synced_batches(&self) -> u64 {
        self.inner.synced.load(Ordering::Relaxed)
    }
}

impl Sink for LocalSink {
    /// `local file <path>`.
    fn describe(&self) -> String {
        format!("local file {}", self.path.display())
    }

    /// [`MAX_BATCH_RECORDS`], [`MAX_BATCH_BYTES`].
    fn limits(&self) -> Limits {
        Limits {
            max_records: MAX_BATCH_RECORDS,
            max_bytes: MAX_BATCH_BYTES,
        }
    }

    /// Appends `records` (each a JSON object) as lines and syncs the file.
    ///
    /// Returns `Delivered` with every record `Accepted` once the data is on disk; `Rejected`
    /// without writing anything when a record is not a JSON object (split the batch to find
    /// it); `Retry` when the file cannot be written or synced. The IO runs on tokio's blocking
    /// pool.
    async fn send(&self, records: &[&[u8]]) -> Outcome {
        if records.is_empty() {
            return Outcome::Delivered(Vec::new());
        }
        let n = records.len();
        let mut lines = Vec::with_capacity(records.iter().map(|r| r.len() + 1).sum());
        for (i, record) in records.iter().enumerate() {
            if let Err(why) = parse_record(record) {
                return Outcome::Rejected {
                    reason: format!("record {} of {n}: {why}", i + 1),
                };
            }
            // Valid JSON has line breaks only as whitespace between tokens.
            lines.extend(record.iter().map(|&b| match b {
                b'\n' | b'\r' => b' ',
                b => b,
            }));
            lines.push(b'\n');
        }
        let inner = self.inner.clone();
        let path = self.path.clone();
        match tokio::task::spawn_blocking(move || append(&inner, &path, &lines)).await {
            Ok(Ok(())) => Outcome::Delivered(vec![RecordOutcome::Accepted; n]),
            Ok(Err(e)) => Outcome::Retry {
                reason: format!("local file {}: {e}", self.path.display()),
                after: None,
            },
            Err(e) => Outcome::Retry {
                reason: format!("local file {}: write task failed: {e}", self.path.display()),
                after: None,
            },
        }
    }
}

fn append(inner: &Inner, path: &Path, lines: &[u8]) -> io::Result<()> {
    let _serialised = inner.lock.lock().unwrap_or_else(|p| p.into_inner());
    let mut file = open_repaired(path, MAX_TORN_TAIL)?;
    let before = file.metadata()?.len();
    let written = file.write_all(lines).and_then(|()| file.sync_data());
    if let Err(e) = written {
        // Do not leave part of the batch behind: it will be appended again.
        if file.set_len(before).is_ok() {
            let _ = file.sync_data();
        }
        return Err(io::Error::new(e.kind(), format!("appending failed: {e}")));
    }
    inner.synced.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Opens (creating if needed) the file for appending and repairs its last line.
fn open_repaired(path: &Path, max_torn: u64) -> io::Result<File> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot create its directory: {e}")))?;
    }
    let existed = path.exists();
    let mut options = OpenOptions::new();
    options.read(true).append(true).create(true);
    #[cfg(unix)]
    {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        // A symlink planted at the sink's path is refused, not written through (#15).
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
    }
    let mut file = options
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open: {e}")))?;
    if !existed {
        sync_parent_dir(path);
    }
    match repair_tail(&mut file, max_torn)? {
        TailRepair::Clean => {}
        TailRepair::NewlineAdded => tracing::warn!(
            path = %path.display(),
            "local sink: the last line had no line break; added one"
        ),
        TailRepair::Truncated { bytes } => tracing::warn!(
            path = %path.display(),
            bytes,
            "local sink: removed a torn last line (an append interrupted by a crash; that record was never reported delivered and will be written again)"
        ),
    }
    Ok(file)
}

#[cfg(unix)]
fn sync_parent_dir(path: &Path) {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

#[cfg(not(unix))]
fn sync_parent_dir(_path: &Path) {}

/// Makes the file end in `\n` (see the module docs). `file` must be readable.
fn repair_tail(file: &mut File, max_torn: u64) -> io::Result<TailRepair> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(TailRepair::Clean);
    }
    let mut last = [0u8];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok(TailRepair::Clean);
    }
    let start = last_line_start(file, len, max_torn)?;
    let mut tail = Vec::with_capacity(usize::try_from(len - start).unwrap_or(0));
    file.seek(SeekFrom::Start(start))?;
    Read::by_ref(file)
        .take(len - start)
        .read_to_end(&mut tail)?;
    let repair = if parse_record(&tail).is_ok() {
        file.write_all(b"\n")?;
        TailRepair::NewlineAdded
    } else {
        file.set_len(start)?;
        TailRepair::Truncated { bytes: len - start }
    };
    file.sync_data()?;
    Ok(repair)
}

/// Offset just after the last `\n` before `len` (0 when there is none).
fn last_line_start(file: &mut File, len: u64, max_torn: u64) -> io::Result<u64> {
    const CHUNK: u64 = 64 * 1024;
    let mut end = len;
    let mut buf = vec![0u8; CHUNK as usize];
    while end > 0 {
        if len - end > max_torn {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "its last line is over {max_torn} bytes without a line break (not an ndjson file?); not repairing it"
                ),
            ));
        }
        let size = CHUNK.min(end);
        let begin = end - size;
        let chunk = &mut buf[..size as usize];
        file.seek(SeekFrom::Start(begin))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(begin + i as u64 + 1);
        }
        end = begin;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn rec(id: &str) -> Vec<u8> {
        format!(r#"{{"sessionId":"{id}","updatedAt":1,"text":"a\nb é"}}"#).into_bytes()
    }

    fn lines(path: &Path) -> Vec<Value> {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.is_empty() || text.ends_with('\n'), "{text:?}");
        text.lines()
            .map(|l| serde_json::from_str(l).expect("every line is json"))
            .collect()
    }

    #[tokio::test]
    async fn appends_each_record_exactly_as_one_synced_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/deeper/sessions.ndjson");
        let sink = LocalSink::open(&path).unwrap();
        assert_eq!(sink.describe(), format!("local file {}", path.display()));
        let (a, b, c) = (rec("a"), rec("b"), br#"{"noId":true}"#.to_vec());
        let got = sink.send(&[&a, &b]).await;
        assert_eq!(
            got,
            Outcome::Delivered(vec![RecordOutcome::Accepted, RecordOutcome::Accepted])
        );
        assert_eq!(
            sink.send(&[&c]).await,
            Outcome::Delivered(vec![RecordOutcome::Accepted])
        );
        assert_eq!(sink.synced_batches(), 2);
        let mut expected = Vec::new();
        for r in [&a, &b, &c] {
            expected.extend_from_slice(r);
            expected.push(b'\n');
        }
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        assert_eq!(lines(&path).len(), 3);
        assert_eq!(sink.send(&[]).await, Outcome::Delivered(vec![]));
        assert_eq!(sink.synced_batches(), 2);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_new_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.ndjson");
        LocalSink::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn a_record_with_line_breaks_stays_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.ndjson");
        let sink = LocalSink::open(&path).unwrap();
        let pretty = b"{\r\n  \"sessionId\": \"p\",\n  \"n\": [1,\n2]\n}".to_vec();
        assert!(matches!(sink.send(&[&pretty]).await, Outcome::Delivered(_)));
        let got = lines(&path);
        assert_eq!(got, vec![serde_json::json!({"sessionId":"p","n":[1,2]})]);
    }

    #[tokio::test]
    async fn a_batch_with_a_non_object_record_is_rejected_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.ndjson");
        let sink = LocalSink::open(&path).unwrap();
        let good = rec("a");
        for bad in [&b"[1,2]"[..], b"\"s\"", b"{\"a\":", b"", b"{} {}", b"\xff"] {
            let got = sink.send(&[&good, bad]).await;
            assert!(
                matches!(&got, Outcome::Rejected { reason } if reason.starts_with("record 2 of 2: ")),
                "{got:?}"
            );
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"");
    }

    #[tokio::test]
    async fn a_torn_tail_is_truncated_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.ndjson");
        let mut old = rec("a");
        old.push(b'\n');
        let mut torn = old.clone();
        torn.extend_from_slice(br#"{"sessionId":"b","upd"#);
        std::fs::write(&path, &torn).unwrap();
        let sink = LocalSink::open(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), old);
        // The interrupted record is appended again (it was still in the outbox).
        let b = rec("b");
        assert!(matches!(sink.send(&[&b]).await, Outcome::Delivered(_)));
        let ids: Vec<Value> = lines(&path)
            .iter()
            .map(|l| l["sessionId"].clone())
            .collect();
        assert_eq!(ids, ["a", "b"]);
    }

    #[tokio::test]
    async fn a_torn_tail_appearing_later_is_repaired_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.ndjson");
        let sink = LocalSink::open(&path).unwrap();
        assert!(matches!(
            sink.send(&[&rec("a")]).await,
            Outcome::Delivered(_)
        ));
        // A crash of an earlier process left half a line (the whole file is one torn line here).
        std::fs::write(&path, b"{\"sessionId\":\"x\"").unwrap();
        assert!(matches!(
            sink.send(&[&rec("b")]).await,
            Outcome::Delivered(_)
        ));
        let ids: Vec<Value> = lines(&path)
            .iter()
            .map(|l| l["sessionId"].clone())
            .collect();
        assert_eq!(ids, ["b"]);
    }

    #[tokio::test]
    async fn a_complete_last_line_without_newline_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.ndjson");
        std::fs::write(&path, b"{\"sessionId\":\"a\"}\n{\"sessionId\":\"b\"}").unwrap();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .unwrap();
        assert_eq!(
            repair_tail(&mut file, MAX_TORN_TAIL).unwrap(),
            TailRepair::NewlineAdded
        );
        assert_eq!(
            repair_tail(&mut file, MAX_TORN_TAIL).unwrap(),
            TailRepair::Clean
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"{\"sessionId\":\"a\"}\n{\"sessionId\":\"b\"}\n"
        );
    }

    #[tokio::test]
    async fn torn_tails_longer_than_a_chunk_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.ndjson");
        let mut content = b"{\"sessionId\":\"a\"}\n".to_vec();
        let keep = content.len() as u64;
        content.extend_from_slice(b"{\"sessionId\":\"big\",\"x\":\"");
        content.extend(std::iter::repeat_n(b'y', 200_000));
        std::fs::write(&path, &content).unwrap();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .unwrap();
        assert_eq!(
            repair_tail(&mut file, MAX_TORN_TAIL).unwrap(),
            TailRepair::Truncated {
                bytes: content.len() as u64 - keep
            }
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), keep);
    }

    #[tokio::test]
    async fn a_huge_line_without_newline_is_not_touched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.ndjson");
        let content = vec![b'z'; 300_000];
        std::fs::write(&path, &content).unwrap();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .unwrap();
        let err = repair_tail(&mut file, 100_000).unwrap_err();
        assert!(err.to_string().contains("without a line break"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), content);
    }

    #[tokio::test]
    async fn an_unusable_path_is_an_error_at_open_and_a_retry_at_send() {
        let dir = tempfile::tempdir().unwrap();
        let err = LocalSink::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("local file {}: ", dir.path().display())),
            "{err}"
        );
        assert!(LocalSink::open("").is_err());

        let path = dir.path().join("s.ndjson");
        let sink = LocalSink::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap(); // the file became a directory
        let got = sink.send(&[&rec("a")]).await;
        assert!(
            matches!(&got, Outcome::Retry { reason, after: None } if reason.contains("cannot open")),
            "{got:?}"
        );
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_full_disk_is_a_retry() {
        // Writing to /dev/full fails with ENOSPC.
        let sink = LocalSink::open("/dev/full").unwrap();
        let got = sink.send(&[&rec("a")]).await;
        assert!(
            matches!(&got, Outcome::Retry { reason, .. } if reason.contains("appending failed")),
            "{got:?}"
        );
        assert_eq!(sink.synced_batches(), 0);
    }
}
