//! The invariants of `ARCHITECTURE.md`, checked on the source tree: which module may use which
//! crate, which modules do no IO, and that the code map names every module.
//!
//! A file's `#[cfg(test)]` tail (its unit tests) and comment lines are not counted: tests may
//! read fixtures, and docs may name anything.

use crate::support::repo_root;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `daemon/src`, as (path relative to `src`, code lines).
fn files() -> Vec<(String, Vec<String>)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut paths = Vec::new();
    walk(&src(), &mut paths);
    paths.sort();
    paths
        .into_iter()
        .filter(|p| !p.ends_with("queue/tests.rs"))
        .map(|p| {
            let rel = p
                .strip_prefix(src())
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(&p).unwrap();
            let code = text
                .lines()
                .take_while(|l| l.trim() != "#[cfg(test)]")
                .filter(|l| !l.trim_start().starts_with("//"))
                .map(str::to_string)
                .collect();
            (rel, code)
        })
        .collect()
}

/// Files (relative paths) outside `allowed` prefixes whose code mentions `needle`.
fn users_outside(needle: &str, allowed: &[&str]) -> Vec<String> {
    files()
        .into_iter()
        .filter(|(rel, _)| !allowed.iter().any(|a| rel.starts_with(a)))
        .filter(|(_, code)| code.iter().any(|l| mentions(l, needle)))
        .map(|(rel, _)| rel)
        .collect()
}

/// `needle` as a whole word (a crate or module path segment).
fn mentions(line: &str, needle: &str) -> bool {
    line.match_indices(needle).any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = line[i + needle.len()..].chars().next();
        let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        !word(before) && !word(after)
    })
}

#[test]
fn only_the_opencode_source_and_the_local_store_use_rusqlite() {
    assert_eq!(
        users_outside("rusqlite", &["source/opencode/", "sink/store/"]),
        Vec::<String>::new()
    );
}

#[test]
fn only_the_convex_sink_uses_reqwest() {
    assert_eq!(
        users_outside("reqwest", &["sink/convex/"]),
        Vec::<String>::new()
    );
}

#[test]
fn only_the_queue_uses_sled() {
    assert_eq!(users_outside("sled", &["queue/"]), Vec::<String>::new());
}

#[test]
fn track_and_export_do_no_io_and_read_no_clock() {
    let io = [
        "std::fs",
        "std::net",
        "std::io",
        "std::process",
        "tokio",
        "rusqlite",
        "reqwest",
        "sled",
        "SystemTime",
        "Instant",
        "clock",
        "crate::queue",
        "crate::sink",
        "crate::daemon",
        "crate::cmd",
    ];
    let mut found = Vec::new();
    for (rel, code) in files() {
        if !(rel.starts_with("track/") || rel.starts_with("export/")) {
            continue;
        }
        for needle in io {
            if code.iter().any(|l| mentions(l, needle)) {
                found.push(format!("{rel}: {needle}"));
            }
        }
    }
    assert_eq!(found, Vec::<String>::new());
}

#[test]
fn the_queue_depends_on_no_other_layer() {
    let mut found = Vec::new();
    for (rel, code) in files() {
        if !rel.starts_with("queue/") {
            continue;
        }
        for layer in [
            "crate::daemon",
            "crate::cmd",
            "crate::sink",
            "crate::track",
            "crate::export",
            "crate::source",
        ] {
            if code.iter().any(|l| mentions(l, layer)) {
                found.push(format!("{rel}: {layer}"));
            }
        }
    }
    assert_eq!(found, Vec::<String>::new());
}

#[test]
fn nothing_outside_the_opencode_source_names_its_tables_or_part_types() {
    // OpenCode's table names in SQL and its part/JSON vocabulary, as string literals.
    let vocabulary = [
        "\"step-finish\"",
        "\"patch\"",
        "\"tool\"",
        "event_sequence",
        "FROM part",
        "FROM message",
        "FROM session",
        "providerID",
        "summary_additions",
    ];
    let mut found = Vec::new();
    for (rel, code) in files() {
        if rel.starts_with("source/opencode/") {
            continue;
        }
        for word in vocabulary {
            if code.iter().any(|l| l.contains(word)) {
                found.push(format!("{rel}: {word}"));
            }
        }
    }
    assert_eq!(found, Vec::<String>::new());
}

#[test]
fn the_code_maps_name_every_module() {
    let architecture =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../ARCHITECTURE.md"))
            .unwrap();
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let modules: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';'))
        .collect();
    assert!(modules.len() >= 10, "{modules:?}");
    for m in &modules {
        assert!(
            architecture.contains(&format!("`{m}/`"))
                || architecture.contains(&format!("`{m}.rs`")),
            "ARCHITECTURE.md's code map does not name `{m}`"
        );
        assert!(
            lib.contains(&format!("[`{m}`]")),
            "lib.rs's code map does not name `{m}`"
        );
    }
}

#[test]
fn every_invariant_names_tests_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let table: Vec<&str> = architecture
        .split("## Invariants")
        .nth(1)
        .expect("ARCHITECTURE.md has an Invariants section")
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| invariant"))
        .collect();
    assert!(table.len() >= 10, "{table:?}");
    // Every `.rs` file of the workspace's tests and sources, concatenated: where a test must be.
    let mut code = String::new();
    for dir in ["daemon/src", "tests/integration"] {
        let mut stack = vec![root.join(dir)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    code.push_str(&std::fs::read_to_string(&p).unwrap());
                }
            }
        }
    }
    for row in table {
        let test_cell = row.trim_end_matches('|').rsplit('|').next().unwrap();
        let names: Vec<&str> = test_cell
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|n| n.contains("::") && !n.ends_with("::tests"))
            .collect();
        let files: Vec<&str> = test_cell
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|n| n.ends_with(".rs") || n.ends_with("::tests") || n.ends_with(".test.ts"))
            .collect();
        for file in files.iter().filter(|n| n.ends_with(".test.ts")) {
            assert!(
                repo_root().join(file).is_file(),
                "ARCHITECTURE.md names the test file `{file}`, which does not exist"
            );
        }
        assert!(
            !names.is_empty() || !files.is_empty(),
            "invariant without a test: {row}"
        );
        for name in names {
            let f = name.rsplit("::").next().unwrap();
            assert!(
                code.contains(&format!("fn {f}(")),
                "ARCHITECTURE.md names the test `{name}`, which does not exist"
            );
        }
    }
}
