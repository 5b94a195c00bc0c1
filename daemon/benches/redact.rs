//! The cost of redaction (`export::redact`): compiling the bundled rules once, and scanning
//! free text with and without secrets: `cargo bench --bench redact`.
//!
//! Plain timing (no statistics framework); prints one line per figure; takes a few seconds.

use std::time::Instant;

use opencode_telemetry::export::redact::{redactor, Redactor};

fn main() {
    let t = Instant::now();
    let r = redactor();
    println!(
        "compile {} rules (first use, once per process): {:.1} ms",
        r.rule_ids().count(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let t = Instant::now();
    let again = Redactor::from_files(&[
        include_str!("../src/export/redact/gitleaks.toml"),
        include_str!("../src/export/redact/rules.toml"),
    ])
    .unwrap();
    println!("compile again: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    drop(again);

    // Prose like a message text: no secret.
    let prose = "I'll read the HTTP client first, then add exponential backoff (100 ms doubling, \
                 capped at 30 s) and a test that the retry stops after five attempts. ";
    let clean: String = prose.repeat(4000 / prose.len() + 1);
    let with_secret = format!(
        "{}\nexport GITHUB_TOKEN=ghp_aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5\n{}",
        &clean[..2000],
        &clean[..2000]
    );
    for (what, text) in [
        ("4 KB of prose, no secret", clean.as_str()),
        ("4 KB with one secret", with_secret.as_str()),
        (
            "a 40-char title",
            "Add retry with backoff to the HTTP client",
        ),
    ] {
        let n = 2000;
        let t = Instant::now();
        let mut hits = 0;
        for _ in 0..n {
            hits += r.redact(std::hint::black_box(text)).1;
        }
        let per = t.elapsed().as_secs_f64() / n as f64;
        println!(
            "{what}: {:.1} µs per text ({:.0} MB/s), {} hit(s) each",
            per * 1e6,
            text.len() as f64 / per / 1e6,
            hits / n
        );
    }
}
