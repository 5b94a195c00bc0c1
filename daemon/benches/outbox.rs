//! Outbox throughput and space, with realistic ~3 KiB records: `cargo bench --bench outbox`.
//!
//! Plain timing (no statistics framework); prints one line per figure. Runs in a temporary
//! directory under Cargo's target dir (a real disk, so every flush is a real `fsync`) and takes
//! well under a minute.

use std::path::Path;
use std::time::{Duration, Instant};

use opencode_telemetry::config::QueueConfig;
use opencode_telemetry::queue::{AckOutcome, Commit, Lane, NewRecord, Outbox};

/// A record shaped like a real `SessionExport` (camelCase, nested usage lists), ~3 KiB.
fn record(i: usize) -> NewRecord {
    let session_id = format!("ses_{i:026}");
    let models: Vec<String> = (0..3)
        .map(|m| {
            format!(
                r#"{{"providerId":"anthropic","modelId":"claude-model-{m}","messages":{},"tokens":{{"input":{},"output":{},"reasoning":0,"cacheRead":{},"cacheWrite":{}}},"cost":{:.4}}}"#,
                10 + m,
                12_000 + i,
                3_400 + m,
                250_000 + i,
                18_000,
                0.4213 + m as f64
            )
        })
        .collect();
    let tools: Vec<String> = [
        "bash",
        "read",
        "edit",
        "grep",
        "glob",
        "write",
        "todowrite",
        "task",
        "webfetch",
        "list",
    ]
    .iter()
    .enumerate()
    .map(|(t, name)| {
        format!(
            r#"{{"name":"{name}","calls":{},"errors":{},"durationMs":{}}}"#,
            5 + t,
            t % 2,
            1_200 * (t + 1)
        )
    })
    .collect();
    let todos: Vec<String> = (0..9)
        .map(|t| {
            format!(
                r#"{{"content":"Step {t} of the plan: update the module and its tests accordingly","status":"completed","priority":"medium"}}"#
            )
        })
        .collect();
    let json = format!(
        r#"{{"schemaVersion":1,"sessionId":"{session_id}","deviceId":"3f2a9c0d8e7b6a5f4e3d2c1b0a998877","hostname":"dev-laptop","opencodeVersion":"1.18.33","daemonVersion":"0.1.0","projectId":"4b825dc642cb6eb9a060e54bf8d69288fbee4904","projectDirectory":"/home/dev/src/some-project","projectWorktree":"/home/dev/src/some-project","title":"Refactor the outbox and add crash tests for session {i}","createdAt":{},"updatedAt":{},"exportedAt":{},"durationMs":1834000,"messageCount":42,"userMessageCount":7,"assistantMessageCount":35,"agentsUsed":["build","plan"],"primaryAgent":"build","todoStats":{{"total":9,"completed":9,"cancelled":0,"pending":0,"inProgress":0}},"codeChanges":{{"additions":412,"deletions":97,"filesChanged":9}},"tokens":{{"input":36000,"output":10200,"reasoning":0,"cacheRead":750000,"cacheWrite":54000}},"cost":1.2639,"models":[{}],"tools":[{}],"skills":[],"endReason":"idle","todos":[{}]}}"#,
        1_795_000_000_000i64 + i as i64,
        1_795_000_900_000i64 + i as i64,
        1_795_000_905_000i64 + i as i64,
        models.join(","),
        tools.join(","),
        todos.join(","),
    );
    NewRecord {
        session_id,
        updated_at: 1_795_000_900_000 + i as i64,
        exported_at: 1_795_000_905_000 + i as i64,
        json: json.into_bytes(),
    }
}

fn config() -> QueueConfig {
    QueueConfig {
        max_bytes: 1 << 30,
        ..QueueConfig::default()
    }
}

/// Sum of the allocated size of every file under `dir` (what `du` reports).
fn du(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            total += du(&entry.path());
        } else {
            #[cfg(unix)]
            {
                use std::os::unix::fs::MetadataExt;
                total += meta.blocks() * 512;
            }
            #[cfg(not(unix))]
            {
                total += meta.len();
            }
        }
    }
    total
}

fn rate(n: usize, d: Duration) -> String {
    format!(
        "{:>9.0} records/s  ({n} records in {:.2} s)",
        n as f64 / d.as_secs_f64(),
        d.as_secs_f64()
    )
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

async fn commit_batches(ob: &Outbox, from: usize, batches: usize, per_batch: usize) -> Duration {
    let start = Instant::now();
    for b in 0..batches {
        let records = (0..per_batch)
            .map(|j| record(from + b * per_batch + j))
            .collect();
        ob.commit(Commit {
            records,
            state_puts: vec![(b"cursor".to_vec(), (b as u64).to_be_bytes().to_vec())],
            state_removes: vec![],
        })
        .await
        .unwrap();
    }
    start.elapsed()
}

/// Drains up to `max` records; returns the time taken and the count.
async fn drain(ob: &Outbox, max: usize, batched: bool) -> (Duration, usize) {
    let start = Instant::now();
    let mut drained = 0;
    while drained < max {
        let batch = ob.pending(Lane::Store, 50.min(max - drained)).unwrap();
        if batch.is_empty() {
            break;
        }
        if batched {
            let outcomes = ob.ack_batch(&batch).await.unwrap();
            assert!(outcomes.iter().all(|o| *o == AckOutcome::Acked));
        } else {
            for p in &batch {
                assert_eq!(ob.ack(p).await.unwrap(), AckOutcome::Acked);
            }
        }
        drained += batch.len();
    }
    ob.flush().await.unwrap();
    (start.elapsed(), drained)
}

async fn run() {
    let base = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let avg = (0..100).map(|i| record(i).json.len()).sum::<usize>() / 100;
    println!(
        "outbox bench: records of {avg} bytes of JSON, data dir {}",
        base.path().display()
    );

    // Commit throughput, each commit = one transaction + flush_async (fsync).
    let data = base.path().join("commit");
    let ob = Outbox::open(&data, &config()).unwrap();
    let _ = commit_batches(&ob, 1_000_000, 20, 1).await; // warm-up
    let single = 1_000;
    let d = commit_batches(&ob, 0, single, 1).await;
    println!("commit, 1 record per commit:    {}", rate(single, d));
    let batches = 100;
    let d = commit_batches(&ob, 100_000, batches, 100).await;
    println!("commit, 100 records per commit: {}", rate(batches * 100, d));

    // Drain, half with one ack per record, half with one ack_batch per pending(50) batch
    // (Convex's default batch size); acks are flushed lazily, plus one final flush.
    let total = ob.stats().unwrap().pending_count as usize;
    let (d, drained) = drain(&ob, total / 2, false).await;
    println!("drain, pending(50) + ack each:  {}", rate(drained, d));
    let (d, drained) = drain(&ob, total, true).await;
    println!("drain, pending(50) + ack_batch: {}", rate(drained, d));
    assert_eq!(ob.stats().unwrap().pending_count, 0);
    let after_drain = ob.stats().unwrap().disk_bytes;
    drop(ob);

    // Space: a fresh outbox holding N pending records.
    let n = 10_000;
    let data = base.path().join("space");
    let ob = Outbox::open(&data, &config()).unwrap();
    commit_batches(&ob, 0, n / 100, 100).await;
    ob.flush().await.unwrap();
    let stats = ob.stats().unwrap();
    let dir_bytes = du(&data.join("queue"));
    println!(
        "space, {n} pending records:    pending_bytes {:.1} MiB ({} B/record), size_on_disk {:.1} MiB ({} B/record), du {:.1} MiB ({} B/record)",
        mib(stats.pending_bytes),
        stats.pending_bytes / n as u64,
        mib(stats.disk_bytes),
        stats.disk_bytes / n as u64,
        mib(dir_bytes),
        dir_bytes / n as u64,
    );
    drop(ob);

    // Open with N pending: sled recovery + the full verification read.
    let start = Instant::now();
    let ob = Outbox::open(&data, &config()).unwrap();
    let d = start.elapsed();
    println!(
        "open + verify with {n} pending:  {:.0} ms",
        d.as_secs_f64() * 1000.0
    );
    drop(ob);
    println!(
        "space after draining {} records in the commit run: size_on_disk {:.1} MiB (sled does not shrink its files)",
        single + batches * 100,
        mib(after_drain)
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let started = Instant::now();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
    println!("total {:.1} s", started.elapsed().as_secs_f64());
}
