use super::*;
use std::collections::BTreeSet;

/// The full record the Convex tests use: every optional field present.
fn full() -> SessionExport {
    serde_json::from_str(include_str!(
        "../../../../convex/tests/fixtures/full-record.json"
    ))
    .unwrap()
}

fn paths_of(r: &SessionExport) -> BTreeSet<String> {
    leaf_paths(&serde_json::to_value(r).unwrap())
}

fn key() -> PathKey {
    PathKey::new([7; 32])
}

/// The level table of the module docs, restated: which classes a level lets leave.
fn allowed(level: Level, class: Class) -> bool {
    use Class::*;
    match (level, class) {
        (_, Count | Name) => true,
        (Level::Counts, _) => false,
        (Level::Metadata, TodoItem | MessageItem | Path) => true,
        (Level::Metadata, Host | Text(_)) => false,
        (Level::Content, _) => true,
    }
}

#[test]
fn every_field_of_the_full_record_is_classified() {
    let paths = paths_of(&full());
    let unclassified: Vec<&String> = paths.iter().filter(|p| class_of(p).is_none()).collect();
    assert!(
        unclassified.is_empty(),
        "classify these in privacy::FIELDS: {unclassified:?}"
    );
    // And the table names nothing the record does not have.
    let stale: Vec<&str> = FIELDS
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !paths.contains(*p))
        .collect();
    assert!(stale.is_empty(), "not in the full record: {stale:?}");
}

#[test]
fn each_level_keeps_exactly_the_fields_of_its_classes() {
    let all = paths_of(&full());
    for level in [Level::Counts, Level::Metadata, Level::Content] {
        let mut r = full();
        apply(&mut r, &Privacy::of_level(level, key()));
        let expected: BTreeSet<String> = all
            .iter()
            .filter(|p| allowed(level, class_of(p).unwrap()))
            .cloned()
            .collect();
        let mut got = paths_of(&r);
        // `redactions` is set by `apply` (0 here: omitted); the fixture has it.
        got.insert("redactions".into());
        assert_eq!(got, expected, "level {level:?}");
    }
}

#[test]
fn paths_are_hashed_under_the_key_named_or_kept() {
    let dir = "/home/ada/src/acme-api";
    let hash = |k: [u8; 32]| {
        // Independent HMAC-SHA256(key, path), first 16 bytes.
        let mut mac = Hmac::<Sha256>::new_from_slice(&k).unwrap();
        mac.update(dir.as_bytes());
        format!("hmac:{}", hex::encode(&mac.finalize().into_bytes()[..16]))
    };
    let with = |mode: PathMode, k: [u8; 32]| {
        let mut r = full();
        r.project_directory = dir.into();
        r.project_worktree = Some(format!("{dir}/"));
        let config = PrivacyConfig {
            project_paths: Some(mode),
            ..PrivacyConfig::default()
        };
        apply(&mut r, &Privacy::new(&config, PathKey::new(k)));
        (r.project_directory, r.project_worktree)
    };
    assert_eq!(
        with(PathMode::Hashed, [7; 32]).0,
        hash([7; 32]),
        "HMAC under the key"
    );
    assert_eq!(with(PathMode::Hashed, [7; 32]).0.len(), 5 + 32);
    assert_ne!(
        with(PathMode::Hashed, [8; 32]).0,
        hash([7; 32]),
        "another key"
    );
    assert_eq!(
        with(PathMode::Name, [7; 32]),
        ("acme-api".to_string(), Some("acme-api".to_string()))
    );
    assert_eq!(
        with(PathMode::Plain, [7; 32]),
        (dir.to_string(), Some(format!("{dir}/")))
    );
    assert_eq!(with(PathMode::Off, [7; 32]), (String::new(), None));
    // The root has no last component: no name is sent.
    let mut r = full();
    r.project_directory = "/".into();
    r.project_worktree = Some("/".into());
    let config = PrivacyConfig {
        project_paths: Some(PathMode::Name),
        ..PrivacyConfig::default()
    };
    apply(&mut r, &Privacy::new(&config, key()));
    assert_eq!(
        (r.project_directory.as_str(), r.project_worktree),
        ("", None)
    );
    assert!(
        format!("{:?}", key()).contains('…'),
        "a key is never printed"
    );
}

#[test]
fn a_switch_wins_over_its_level_both_ways() {
    let config = PrivacyConfig {
        level: Level::Counts,
        titles: Some(true),
        ..PrivacyConfig::default()
    };
    let mut r = full();
    let title = r.title.clone();
    apply(&mut r, &Privacy::new(&config, key()));
    assert_eq!(r.title, title);
    assert!(r.project_directory.is_empty() && r.todos.is_none());

    let config = PrivacyConfig {
        level: Level::Content,
        hostname: Some(false),
        error_messages: Some(false),
        project_paths: Some(PathMode::Hashed),
        ..PrivacyConfig::default()
    };
    let mut r = full();
    apply(&mut r, &Privacy::new(&config, key()));
    assert!(r.hostname.is_empty());
    assert!(r.error.as_ref().unwrap().message.is_empty());
    assert!(r.project_directory.starts_with("hmac:"));
    assert!(!r.title.is_empty() && !r.messages.as_ref().unwrap()[0].text.is_empty());
}

#[test]
fn every_free_text_that_leaves_is_redacted_and_counted() {
    let pat = format!("ghp_{}", "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5");
    let mut r = full();
    r.title = format!("fix {pat}");
    r.children[0].title = format!("child {pat}");
    r.error.as_mut().unwrap().message = format!("401 for {pat}");
    r.todos.as_mut().unwrap()[0].content = format!("rotate {pat}");
    r.messages.as_mut().unwrap()[0].text = format!("GITHUB_TOKEN={pat}");
    r.project_directory = format!("/tmp/{pat}");
    apply(&mut r, &Privacy::of_level(Level::Content, key()));
    let json = serde_json::to_string(&r).unwrap();
    assert!(!json.contains(&pat), "{json}");
    assert_eq!(r.title, "fix [redacted:github-pat]");
    assert_eq!(r.redactions, 6);
}

#[test]
fn a_tombstone_keeps_counts_and_names_and_nothing_written() {
    let last = full();
    let t = crate::export::mark_deleted(&last, last.exported_at + 10, OnDelete::Tombstone);
    let paths = paths_of(&t);
    for p in &paths {
        let class = class_of(p).unwrap();
        assert!(
            matches!(class, Class::Count | Class::Name),
            "{p} ({class:?}) in a tombstone"
        );
    }
    assert_eq!(t.deletion, Some(OnDelete::Tombstone));
    assert_eq!(t.end_reason, EndReason::Deleted);
    assert_eq!(t.deleted_at, Some(last.exported_at + 10));
    assert_eq!(
        (t.message_count, t.tokens, t.cost, t.todo_stats),
        (last.message_count, last.tokens, last.cost, last.todo_stats)
    );
    assert_eq!(t.models, last.models);
    let keep = crate::export::mark_deleted(&last, last.exported_at + 10, OnDelete::Keep);
    assert_eq!(keep.title, last.title);
    assert_eq!(keep.deletion, Some(OnDelete::Keep));
    let delete = crate::export::mark_deleted(&last, last.exported_at + 10, OnDelete::Delete);
    assert_eq!(delete.deletion, Some(OnDelete::Delete));
    assert!(delete.title.is_empty() && delete.todos.is_none());
}
