//! Opening the outbox: lock detection, verification of every tree, repair of the `order` index,
//! and quarantine of a corrupt directory (see "Corruption is quarantined" in the module doc).

use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use sled::transaction::TransactionError;
use sled::IVec;

use super::committed;
use super::format::{self, meta_key, Envelope, LAYOUT_V1, LAYOUT_VERSION};
use super::store::{decode_entry, remove_stale_order_key, Delta, Trees, Tx, TxResult};
use super::{Lane, QueueError, Rebuild, QUEUE_DIR_NAME};
use crate::clock::now_ms;

/// Pending and dead counts of a verified outbox.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Counts {
    pub pending_count: i64,
    pub pending_bytes: i64,
    pub dead_count: i64,
    /// Entries per lane, by [`Lane::index`].
    pub lane_pending: [i64; 3],
    /// Dead entries per lane.
    pub lane_dead: [i64; 3],
    /// Lane entries dropped because their lane is not configured any more, per lane.
    pub dropped: Vec<(Lane, u64)>,
    /// Entries migrated from layout 1 into the lanes, when this open migrated it.
    pub migrated: Option<u64>,
    /// `meta/next_seq` after verification (durable: read from disk, or repaired and flushed).
    pub next_seq: u64,
}

/// A verified outbox.
pub(crate) struct Opened {
    pub dir: PathBuf,
    pub trees: Trees,
    pub counts: Counts,
    pub rebuild: Option<Rebuild>,
}

/// Why an open attempt failed.
enum Failure {
    /// Another opener holds the lock.
    Locked,
    /// An OS error (permissions, no space, …): not corruption, leave the directory alone.
    Os(sled::Error),
    /// Corrupt content (sled's `Corruption`, a non-OS IO error, a sled panic, …).
    Corrupt(String),
    /// Any other error, returned as is.
    Fatal(QueueError),
}

/// Opens and verifies `<data_dir>/queue`, quarantining and recreating it if it is corrupt.
pub(crate) fn open(
    data_dir: &Path,
    cache_capacity: u64,
    lanes: &[Lane],
    keep_unconfigured: bool,
) -> Result<Opened, QueueError> {
    let dir = data_dir.join(QUEUE_DIR_NAME);
    create_dir(data_dir, false)?;
    // Something that is not a directory where the outbox belongs (a file left by a tool, a
    // broken symlink): moved aside like a corrupt outbox, so the daemon starts instead of
    // failing every restart on it.
    if let Some(cause) = not_a_directory(&dir) {
        return rebuild(
            data_dir,
            dir,
            cache_capacity,
            lanes,
            keep_unconfigured,
            cause,
        );
    }
    create_dir(&dir, true)?;
    // The high-water mark recorded outside sled's files after a completed flush (or, written
    // by builds before `committed.json`, in the status file).
    let committed = committed::read(&dir).or_else(|| committed::read_legacy(data_dir));
    let cause = match open_verified(&dir, cache_capacity, committed, lanes, keep_unconfigured) {
        Ok((trees, counts)) => {
            return Ok(Opened {
                dir,
                trees,
                counts,
                rebuild: None,
            })
        }
        Err(Failure::Locked) => return Err(QueueError::Locked { dir }),
        Err(Failure::Os(source)) => return Err(QueueError::Open { dir, source }),
        Err(Failure::Fatal(e)) => return Err(e),
        Err(Failure::Corrupt(cause)) => cause,
    };
    rebuild(
        data_dir,
        dir,
        cache_capacity,
        lanes,
        keep_unconfigured,
        cause,
    )
}

/// Moves `dir` aside to a [`quarantine_path`] and opens a fresh outbox in its place.
fn rebuild(
    data_dir: &Path,
    dir: PathBuf,
    cache_capacity: u64,
    lanes: &[Lane],
    keep_unconfigured: bool,
    cause: String,
) -> Result<Opened, QueueError> {
    let to = quarantine_path(data_dir);
    if let Err(source) = std::fs::rename(&dir, &to) {
        return Err(QueueError::Quarantine {
            dir,
            to,
            cause,
            source,
        });
    }
    create_dir(&dir, true)?;
    match open_verified(&dir, cache_capacity, None, lanes, keep_unconfigured) {
        Ok((trees, counts)) => Ok(Opened {
            dir,
            trees,
            counts,
            rebuild: Some(Rebuild {
                moved_to: to,
                cause,
            }),
        }),
        Err(Failure::Locked) => Err(QueueError::Locked { dir }),
        Err(Failure::Os(source)) => Err(QueueError::Open { dir, source }),
        Err(Failure::Fatal(e)) => Err(e),
        Err(Failure::Corrupt(cause)) => Err(QueueError::RebuildFailed { dir, cause }),
    }
}

/// Why `dir` exists but cannot be the outbox directory (a file, a socket, a symlink to nothing),
/// or `None` (a directory, possibly through a symlink, or nothing there yet).
fn not_a_directory(dir: &Path) -> Option<String> {
    let meta = std::fs::symlink_metadata(dir).ok()?;
    if meta.is_dir() || dir.is_dir() {
        return None;
    }
    let what = if meta.file_type().is_symlink() {
        "a symlink to no directory"
    } else if meta.is_file() {
        "a file"
    } else {
        "not a directory"
    };
    Some(format!("{} is {what}", dir.display()))
}

/// Creates a directory (owner-only for the outbox itself).
fn create_dir(dir: &Path, private: bool) -> Result<(), QueueError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    #[cfg(not(unix))]
    let _ = private;
    builder.create(dir).map_err(|source| QueueError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    })
}

/// `<data_dir>/queue.corrupt-<unix seconds>`, with `-1`, `-2`, … appended if taken.
fn quarantine_path(data_dir: &Path) -> PathBuf {
    let secs = now_ms().div_euclid(1000);
    let base = format!("{QUEUE_DIR_NAME}.corrupt-{secs}");
    let mut path = data_dir.join(&base);
    let mut n = 1;
    while path.exists() {
        path = data_dir.join(format!("{base}-{n}"));
        n += 1;
    }
    path
}

/// Removes `snap.*.generating` files: sled writes a snapshot under that name, fsyncs it and
/// renames it, so such a file is by construction an interrupted write (a crash or power loss in
/// between). sled 0.34 would pick it as the newest snapshot and fail on it; without it, sled
/// replays its log from the previous snapshot.
fn remove_interrupted_snapshots(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::warn!(file = %entry.path().display(), "removed an interrupted sled snapshot")
                }
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove an interrupted sled snapshot")
                }
            }
        }
    }
}

/// Opens sled and verifies every tree, turning sled panics into [`Failure::Corrupt`].
fn open_verified(
    dir: &Path,
    cache_capacity: u64,
    committed: Option<u64>,
    lanes: &[Lane],
    keep_unconfigured: bool,
) -> Result<(Trees, Counts), Failure> {
    remove_interrupted_snapshots(dir);
    // sled recovers the longest valid prefix of its log; a damaged start of the log recovers as
    // an *empty* database. An outbox that had data always has its layout marker (flushed when
    // the outbox is created), so a non-empty log without it is corruption, not a new outbox.
    let had_data = std::fs::metadata(dir.join("db")).is_ok_and(|m| m.len() > 0);
    // A missing or empty log is a new outbox (or one reset by hand), not a damaged one.
    let committed = committed.filter(|_| had_data);
    catch_unwind(AssertUnwindSafe(|| {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_capacity)
            .open()
            .map_err(classify)?;
        let tree = |name: &str| db.open_tree(name).map_err(classify);
        let trees = Trees {
            outbox: tree("outbox")?,
            order: tree("lane_order")?,
            lanes: tree("lanes")?,
            legacy_order: tree("order")?,
            state: tree("state")?,
            dead: tree("dead")?,
            meta: tree("meta")?,
            db: db.clone(),
        };
        let counts = verify(dir, &trees, had_data, committed, lanes, keep_unconfigured)?;
        Ok((trees, counts))
    }))
    .unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        Err(Failure::Corrupt(format!("sled panicked: {msg}")))
    })
}

/// Sorts a sled error into lock / OS problem / corruption.
fn classify(e: sled::Error) -> Failure {
    match &e {
        // sled 0.34.7 config.rs `try_lock`: an `Other` IO error with this text.
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => Failure::Locked,
        sled::Error::Io(io) if io.raw_os_error().is_some() => Failure::Os(e),
        // Synthesized IO errors (unexpected EOF, invalid data), `Corruption`, `ReportableBug`,
        // `Unsupported` (a config stored in the directory that contradicts ours), …
        _ => Failure::Corrupt(e.to_string()),
    }
}

fn tx_failure(e: TransactionError<QueueError>) -> Failure {
    match e {
        TransactionError::Abort(e) => Failure::Fatal(e),
        TransactionError::Storage(e) => classify(e),
    }
}

/// Reads every entry of every tree (sled finds many corrupt pages only on read), checks the
/// layout and migrates layout 1, moves undecodable envelopes to `dead`, drops the entries of
/// lanes no longer configured (unless `keep_unconfigured`: an inspecting command), repairs the lane entries, the `lane_order` index and `next_seq`,
/// and counts what is pending and dead.
fn verify(
    dir: &Path,
    trees: &Trees,
    had_data: bool,
    committed: Option<u64>,
    lanes: &[Lane],
    keep_unconfigured: bool,
) -> Result<Counts, Failure> {
    let layout =
        match trees.meta.get(meta_key::LAYOUT).map_err(classify)? {
            None if had_data => return Err(Failure::Corrupt(
                "the outbox log had data but recovered without its layout marker (a damaged log)"
                    .into(),
            )),
            None => {
                trees
                    .meta
                    .insert(meta_key::LAYOUT, &LAYOUT_VERSION.to_be_bytes()[..])
                    .map_err(classify)?;
                // Durable at once, so that a later open can tell "new" from "wiped".
                trees.db.flush().map_err(classify)?;
                LAYOUT_VERSION
            }
            Some(v) => match format::decode_u64(&v) {
                Some(found) if found > LAYOUT_VERSION => {
                    return Err(Failure::Fatal(QueueError::NewerLayout {
                        dir: dir.to_path_buf(),
                        found,
                        known: LAYOUT_VERSION,
                    }))
                }
                Some(found) => found,
                None => return Err(Failure::Corrupt("meta/layout is not a u64".into())),
            },
        };

    let mut counts = Counts::default();
    let mut max_seq = 0u64;
    let mut seqs: HashMap<IVec, (u64, u32)> = HashMap::new();
    let mut undecodable: Vec<(IVec, IVec, String)> = Vec::new();
    for kv in trees.outbox.iter() {
        let (key, value) = kv.map_err(classify)?;
        match decode_entry(&key, &value) {
            Ok(env) => {
                counts.pending_count += 1;
                counts.pending_bytes += value.len() as i64;
                max_seq = max_seq.max(env.seq);
                seqs.insert(key, (env.seq, env.attempts));
            }
            Err(reason) => undecodable.push((key, value, reason)),
        }
    }

    let run = |f: &dyn Fn(&Tx<'_>) -> TxResult<Delta>| trees.tx(f).map_err(tx_failure);
    let mut repaired = false;

    // Layout 1 → 2: every entry becomes pending in every configured lane, with its attempts;
    // the old FIFO is emptied; all in one transaction (a crash before it is flushed leaves
    // layout 1, migrated again at the next open).
    if layout == LAYOUT_V1 {
        let mut legacy: Vec<IVec> = Vec::new();
        for kv in trees.legacy_order.iter() {
            let (key, _) = kv.map_err(classify)?;
            max_seq = max_seq.max(format::parse_seq_key(&key).unwrap_or(0));
            legacy.push(key);
        }
        run(&|t| {
            let mut d = Delta::default();
            for (sid, &(seq, attempts)) in &seqs {
                for &lane in lanes {
                    t.put_lane_entry(lane, sid, seq, attempts, &mut d)?;
                }
            }
            for key in &legacy {
                t.legacy_order.remove(key)?;
            }
            t.meta
                .insert(meta_key::LAYOUT, &LAYOUT_VERSION.to_be_bytes()[..])?;
            Ok(d)
        })?;
        counts.migrated = Some(seqs.len() as u64);
        repaired = true;
    }

    // Lane entries: valid when their lane is known and configured and the outbox holds the
    // version they name.
    let mut valid: HashMap<(Lane, IVec), u64> = HashMap::new();
    let mut stale_entries: Vec<IVec> = Vec::new();
    let mut dropped: HashMap<Lane, u64> = HashMap::new();
    let mut dropped_sids: HashSet<IVec> = HashSet::new();
    for kv in trees.lanes.iter() {
        let (key, value) = kv.map_err(classify)?;
        let Some((lane, sid)) = format::split_lane_key(&key) else {
            stale_entries.push(key);
            continue;
        };
        let sid = IVec::from(sid);
        if !lanes.contains(&lane) && !keep_unconfigured {
            *dropped.entry(lane).or_default() += 1;
            dropped_sids.insert(sid);
            stale_entries.push(key);
            continue;
        }
        match (format::decode_lane_entry(&value), seqs.get(&sid)) {
            (Ok(entry), Some(&(seq, _))) if entry.seq() == seq => {
                counts.lane_pending[lane.index()] += 1;
                valid.insert((lane, sid), seq);
            }
            _ => stale_entries.push(key),
        }
    }

    let mut indexed: HashSet<(Lane, IVec)> = HashSet::new();
    let mut stale: Vec<(IVec, IVec)> = Vec::new();
    for kv in trees.order.iter() {
        let (key, sid) = kv.map_err(classify)?;
        let parsed = format::split_lane_key(&key)
            .and_then(|(lane, rest)| Some((lane, format::parse_seq_key(rest)?)));
        max_seq = max_seq.max(parsed.map_or(0, |(_, seq)| seq));
        match parsed {
            Some((lane, seq)) if valid.get(&(lane, sid.clone())) == Some(&seq) => {
                indexed.insert((lane, sid));
            }
            _ => stale.push((key, sid)),
        }
    }

    for kv in trees.dead.iter() {
        let (key, value) = kv.map_err(classify)?;
        max_seq = max_seq.max(format::dead_key_seq(&key).unwrap_or(0));
        if let Ok(Some(lane)) = format::decode_dead(&value).map(|d| d.lane) {
            counts.lane_dead[lane.index()] += 1;
        }
    }
    // Touch every page of the remaining trees too, but the service's large last records
    // (see `LAZY_STATE_PREFIX`).
    touch_every_page(&trees.state, Some(super::LAZY_STATE_PREFIX))?;
    touch_every_page(&trees.meta, None)?;

    let next_seq = trees
        .meta
        .get(meta_key::NEXT_SEQ)
        .map_err(classify)?
        .and_then(|v| format::decode_u64(&v))
        .unwrap_or(0);
    // sled recovers the longest valid prefix of its log, so damage in the middle rewinds the
    // outbox to an earlier state without any error. A recovered sequence below the last one
    // known durable (recorded outside sled) means flushed commits were lost: corruption.
    let recovered = next_seq.max(max_seq + 1);
    if let Some(committed) = committed.filter(|c| recovered < *c) {
        return Err(Failure::Corrupt(format!(
            "the outbox log recovered to sequence {recovered}, but sequence {committed} had been durably committed (a damaged log)"
        )));
    }
    if next_seq <= max_seq {
        trees
            .meta
            .insert(meta_key::NEXT_SEQ, &(max_seq + 1).to_be_bytes()[..])
            .map_err(classify)?;
        repaired = true;
    }
    let now = now_ms();
    for (key, value, reason) in &undecodable {
        let reason = format!("undecodable envelope: {reason}");
        run(&|t| t.bury(key, value, &reason, now))?;
        repaired = true;
    }
    for key in &stale_entries {
        run(&|t| {
            t.lanes.remove(key)?;
            Ok(Delta::default())
        })?;
        repaired = true;
    }
    for (key, sid) in &stale {
        run(&|t| remove_stale_order_key(t, key, sid).map(|()| Delta::default()))?;
        repaired = true;
    }
    let holders: &[Lane] = if keep_unconfigured { &Lane::ALL } else { lanes };
    for (lane, sid) in valid.keys().filter(|k| !indexed.contains(*k)) {
        let delta = run(&|t| reindex(t, *lane, sid, holders))?;
        counts.pending_bytes += delta.pending_bytes;
        repaired = true;
    }
    // An entry no configured lane holds: if a lane that is gone held it, it goes (that sink is
    // no longer wanted); otherwise (not expected: acks remove the entry with its last lane) it
    // is given to every configured lane again, so nothing is lost.
    let held: HashSet<&IVec> = valid.keys().map(|(_, sid)| sid).collect();
    for (sid, &(seq, _)) in seqs.iter().filter(|(sid, _)| !held.contains(sid)) {
        let gone_lane_held_it = dropped_sids.contains(sid);
        let delta = run(&|t| {
            let mut d = Delta::default();
            if gone_lane_held_it || lanes.is_empty() {
                if let Some(v) = t.outbox.remove(&**sid)? {
                    d.remove_pending(v.len());
                }
            } else {
                for &lane in lanes {
                    t.put_lane_entry(lane, sid, seq, 0, &mut d)?;
                }
            }
            Ok(d)
        })?;
        counts.pending_count += delta.pending_count;
        counts.pending_bytes += delta.pending_bytes;
        for i in 0..3 {
            counts.lane_pending[i] += delta.lane_pending[i];
        }
        repaired = true;
    }
    counts.next_seq = trees
        .meta
        .get(meta_key::NEXT_SEQ)
        .map_err(classify)?
        .and_then(|v| format::decode_u64(&v))
        .unwrap_or(recovered)
        .max(recovered);
    let mut dropped: Vec<(Lane, u64)> = dropped.into_iter().collect();
    dropped.sort();
    counts.dropped = dropped;

    counts.dead_count = trees.dead.len() as i64;
    if repaired {
        trees.db.flush().map_err(classify)?;
    }
    Ok(counts)
}

/// Reads every entry of `tree` (sled detects many corrupt pages only when they are read), but
/// those under `skip`, a range of [`TOUCH_PAGE`] keys at a time.
///
/// What a read costs in memory: sled 0.34 records page accesses in 256 queues of 64 and evicts
/// only when a queue is full, so up to 16,384 pages stay in memory whatever `cache_capacity`
/// says — about the whole tree, for a tree of fewer pages (measured: 86 MB of RSS for the
/// `state` tree of 50,000 sessions, 102 MB for `status` in all). Leaving out the last records,
/// four fifths of that tree, keeps the open's cost to the small entries.
fn touch_every_page(tree: &sled::Tree, skip: Option<&[u8]>) -> Result<(), Failure> {
    use std::ops::Bound;
    let mut from: Bound<IVec> = Bound::Unbounded;
    loop {
        let mut next = None;
        let mut n = 0;
        for kv in tree.range::<IVec, _>((from.clone(), Bound::Unbounded)) {
            let (key, _) = kv.map_err(classify)?;
            if let Some(prefix) = skip.filter(|p| key.starts_with(p)) {
                // On past every key with the prefix (a non-empty prefix below 0xff).
                let mut end = prefix.to_vec();
                *end.last_mut().expect("a non-empty prefix") += 1;
                next = Some(Bound::Included(IVec::from(end)));
                break;
            }
            n += 1;
            if n == TOUCH_PAGE {
                next = Some(Bound::Excluded(key));
                break;
            }
        }
        match next {
            Some(bound) => from = bound,
            None => return Ok(()),
        }
    }
}

/// Keys [`touch_every_page`] reads per range.
const TOUCH_PAGE: usize = 512;

/// Gives `lane`'s entry of `sid` its missing `lane_order` key; if that key is taken by another
/// session, rewrites the entry under a fresh sequence number for every configured lane.
fn reindex(t: &Tx<'_>, lane: Lane, sid: &[u8], lanes: &[Lane]) -> TxResult<Delta> {
    let mut delta = Delta::default();
    let Some(value) = t.outbox.get(sid)? else {
        return Ok(delta);
    };
    let Ok(env) = decode_entry(sid, &value) else {
        return Ok(delta);
    };
    let key = format::lane_order_key(lane, env.seq);
    match t.order.get(&key)? {
        Some(owner) if owner == sid => {}
        None => {
            t.order.insert(key, sid)?;
        }
        Some(_) => {
            let seq = t.take_seqs(1)?;
            let record = &value[env.body..];
            let stored = format::encode_envelope(&Envelope { seq, ..env.clone() }, record)
                .map_err(|source| {
                    sled::transaction::ConflictableTransactionError::Abort(QueueError::Encode {
                        session_id: env.session_id.clone(),
                        source,
                    })
                })?;
            let held: Vec<Lane> = lanes
                .iter()
                .copied()
                .filter(|l| {
                    t.lanes
                        .get(format::lane_key(*l, sid))
                        .ok()
                        .flatten()
                        .is_some()
                })
                .collect();
            // Replaces the entry (net count 0) and its lane entries (net 0 per lane).
            t.put_pending(sid, seq, stored, &held, &mut delta)?;
        }
    }
    Ok(delta)
}
