//! `report` over a large local store: `cargo bench --bench report [-- --sessions N]`.
//!
//! Fills a store (in a temporary directory under Cargo's target dir) with N sessions (default
//! 100,000) through the store sink's own upsert, in batches of `MAX_BATCH_RECORDS` (200) as the
//! sender sends them: records cloned from `convex/tests/fixtures/full-record.json` (every field
//! present: models, tools, skills, children, a rollup) with fresh ids, spread over a year and 50
//! projects. Then
//! times every view of `report` as the command builds it (open the store read-only, query,
//! group, render), once as a table and once as JSON, and prints one line per figure. The target
//! is under 1 s per view at 100,000 sessions.

use std::time::Instant;

use opencode_telemetry::cmd::report::{report_text, Format, Scope, View};
use opencode_telemetry::sink::store::StoreSink;
use serde_json::Value;

fn main() {
    let mut sessions = 100_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--sessions" {
            sessions = args.next().and_then(|v| v.parse().ok()).unwrap_or(sessions);
        }
    }
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    std::fs::create_dir_all(&target).unwrap();
    let dir = tempfile::tempdir_in(&target).unwrap();

    let template: Value =
        serde_json::from_str(include_str!("../../convex/tests/fixtures/full-record.json")).unwrap();
    let sink = StoreSink::open(dir.path()).unwrap();
    let year_ms: i64 = 365 * 86_400_000;
    let start = 1_764_547_200_000i64; // 2025-12-01T00:00Z
    let fill = Instant::now();
    let max = opencode_telemetry::sink::store::MAX_BATCH_RECORDS;
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(max);
    let mut bytes = 0usize;
    for i in 0..sessions {
        let mut r = template.clone();
        let created = start + (i as i64 * 7_919 * 1_000) % year_ms;
        r["sessionId"] = format!("ses_{i:026}").into();
        r["createdAt"] = created.into();
        r["updatedAt"] = (created + 60_000).into();
        r["exportedAt"] = (created + 65_000).into();
        r["revision"] = (created + 65_000).into();
        r["contentHash"] = format!("{i:032x}").into();
        r["projectDirectory"] = format!("/home/dev/src/project-{}", i % 50).into();
        r.as_object_mut().unwrap().remove("parentSessionId");
        r.as_object_mut().unwrap().remove("messages");
        let json = serde_json::to_vec(&r).unwrap();
        bytes += json.len();
        batch.push(json);
        if batch.len() == max || i + 1 == sessions {
            let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
            sink.upsert_batch(&refs).unwrap();
            batch.clear();
        }
    }
    let fill = fill.elapsed();
    let db_bytes = std::fs::metadata(dir.path().join("sessions.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "fill: {sessions} sessions ({:.1} MiB of records) upserted in {:.1} s ({:.0} sessions/s); sessions.db {:.1} MiB",
        bytes as f64 / 1048576.0,
        fill.as_secs_f64(),
        sessions as f64 / fill.as_secs_f64(),
        db_bytes as f64 / 1048576.0
    );
    drop(sink);

    let scope = Scope {
        timezone: Some("Europe/Paris".into()),
        ..Scope::default()
    };
    let views = [
        View::Daily,
        View::Weekly,
        View::Monthly,
        View::Session,
        View::Project,
        View::Model,
        View::Agent,
        View::Tool,
        View::Skill,
        View::Device,
    ];
    for view in views {
        for (format, name) in [(Format::Table, "table"), (Format::Json, "json")] {
            let t = Instant::now();
            let out = report_text(dir.path(), view, &scope, false, format, false).unwrap();
            let took = t.elapsed();
            println!(
                "report {view:?} ({name}): {:.0} ms, {} lines",
                took.as_secs_f64() * 1000.0,
                out.lines().count()
            );
        }
    }
    let t = Instant::now();
    report_text(dir.path(), View::Daily, &scope, true, Format::Table, false).unwrap();
    println!(
        "report Daily --breakdown (table): {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let month = Scope {
        since: Some("2026-03-01".into()),
        until: Some("2026-03-31".into()),
        ..scope.clone()
    };
    let t = Instant::now();
    report_text(dir.path(), View::Daily, &month, false, Format::Table, false).unwrap();
    println!(
        "report Daily --since 2026-03-01 --until 2026-03-31 (table): {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
}
