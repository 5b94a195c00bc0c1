//! Fitting a [`SessionExport`] into Convex's limits, so that a big session is stored shortened,
//! never refused whole.
//!
//! Convex stores each record as one document: at most 1 MiB (its own encoding, field names
//! included), at most 8192 items per array, at most 1024 fields per object. The record's
//! objects have fixed, small field sets; strings and arrays are what can grow. [`fit`] applies,
//! in this order:
//!
//! 1. **Strings** longer than their cap keep their first characters and end with
//!    [`marker`]: `title` ([`MAX_TITLE_CHARS`]), `error.message` and each child's `title` and
//!    `error.message` ([`MAX_ERROR_CHARS`], [`MAX_TITLE_CHARS`]), each todo's `content`
//!    ([`MAX_TODO_CHARS`]). Message texts are cut earlier, by the builder, to
//!    `export.max_message_chars`, with the same marker.
//! 2. **Arrays** keep their first [`MAX_ARRAY_ITEMS`] items (`agentsUsed`, `models`, `tools`,
//!    `skills`, `children`, `todos`, `messages`).
//! 3. **Size**: while the record's JSON is over [`MAX_RECORD_BYTES`], it gives up, in this
//!    order: message texts from the last message back (each replaced by the marker; the first
//!    message — usually the user's prompt, "what was asked" — is kept longest), then whole
//!    messages from the end, then the first message's text, then todos, children, tools,
//!    skills and models from the end. Counts and totals (`messageCount`, `todoStats`, `tokens`,
//!    `cost`, `rollup`) are computed before fitting and are never changed.
//!
//! Every field shortened is named in [`SessionExport::truncated`] (`"title"`, `"error"`,
//! `"children"`, `"todos"`, `"messages"`, …; sorted, no duplicates), so the dashboard shows
//! what is partial. A record that needed nothing has no `truncated` field at all.
//!
//! [`MAX_RECORD_BYTES`] is 640 KiB of JSON: Convex's size of a document can exceed its JSON size
//! (a number is 8 bytes plus a tag however short its digits), and on this record's shape the
//! worst case stays well under 1 MiB.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::export::record::SessionExport;

/// Most bytes of JSON one record may have after [`fit`].
pub const MAX_RECORD_BYTES: usize = 640 * 1024;
/// Most items kept per array (Convex allows 8192).
pub const MAX_ARRAY_ITEMS: usize = 4096;
/// Bytes kept free for `"truncated":[…]` (every name it can hold fits).
const TRUNCATED_RESERVE: usize = 256;
/// Longest `title` kept (characters, before the marker); also each child's `title`.
pub const MAX_TITLE_CHARS: usize = 1024;
/// Longest `error.message` kept (characters, before the marker); also each child's.
pub const MAX_ERROR_CHARS: usize = 16 * 1024;
/// Longest todo `content` kept (characters, before the marker).
pub const MAX_TODO_CHARS: usize = 4096;

/// What replaces the cut end of a string: `… [truncated by opencode-telemetry: N more chars]`.
pub fn marker(more_chars: usize) -> String {
    format!("… [truncated by opencode-telemetry: {more_chars} more chars]")
}

/// Cuts `text` to its first `max_chars` characters followed by [`marker`]; true when it was
/// cut. Cuts on a character boundary.
pub fn cut_chars(text: &mut String, max_chars: usize) -> bool {
    let Some((at, _)) = text.char_indices().nth(max_chars) else {
        return false;
    };
    let more = text[at..].chars().count();
    text.truncate(at);
    text.push_str(&marker(more));
    true
}

/// A message's text cut to its first `max_chars` characters followed by [`marker`] (counting
/// every character of the whole text, including those the source only counted); true when it
/// was cut.
pub fn cut_text(text: &crate::source::MessageText, max_chars: usize) -> (String, bool) {
    let kept = text.kept();
    if text.chars() <= max_chars {
        return (kept.to_string(), false);
    }
    let end = kept
        .char_indices()
        .nth(max_chars)
        .map_or(kept.len(), |(i, _)| i);
    let mut out = kept[..end].to_string();
    out.push_str(&marker(text.chars() - kept[..end].chars().count()));
    (out, true)
}

/// Shortens `record` in place until it fits Convex's limits (see the module docs), adding the
/// names of the fields it shortened to `record.truncated`.
pub fn fit(record: &mut SessionExport) {
    let mut cut: BTreeSet<&'static str> = BTreeSet::new();

    // 1. Strings.
    mark(
        &mut cut,
        cut_chars(&mut record.title, MAX_TITLE_CHARS),
        "title",
    );
    if let Some(e) = &mut record.error {
        mark(
            &mut cut,
            cut_chars(&mut e.message, MAX_ERROR_CHARS),
            "error",
        );
    }
    for c in &mut record.children {
        mark(
            &mut cut,
            cut_chars(&mut c.title, MAX_TITLE_CHARS),
            "children",
        );
        if let Some(e) = &mut c.error {
            mark(
                &mut cut,
                cut_chars(&mut e.message, MAX_ERROR_CHARS),
                "children",
            );
        }
    }
    if let Some(todos) = &mut record.todos {
        for t in todos.iter_mut() {
            mark(&mut cut, cut_chars(&mut t.content, MAX_TODO_CHARS), "todos");
        }
    }

    // 2. Array lengths.
    mark(
        &mut cut,
        cap(&mut record.agents_used, MAX_ARRAY_ITEMS),
        "agentsUsed",
    );
    mark(&mut cut, cap(&mut record.models, MAX_ARRAY_ITEMS), "models");
    mark(&mut cut, cap(&mut record.tools, MAX_ARRAY_ITEMS), "tools");
    mark(&mut cut, cap(&mut record.skills, MAX_ARRAY_ITEMS), "skills");
    mark(
        &mut cut,
        cap(&mut record.children, MAX_ARRAY_ITEMS),
        "children",
    );
    if let Some(r) = &mut record.rollup {
        let cut_rollup = cap(&mut r.models, MAX_ARRAY_ITEMS)
            | cap(&mut r.tools, MAX_ARRAY_ITEMS)
            | cap(&mut r.skills, MAX_ARRAY_ITEMS);
        mark(&mut cut, cut_rollup, "rollup");
    }
    if let Some(i) = &mut record.inherited {
        mark(&mut cut, cap(&mut i.models, MAX_ARRAY_ITEMS), "inherited");
    }
    if let Some(todos) = &mut record.todos {
        mark(&mut cut, cap(todos, MAX_ARRAY_ITEMS), "todos");
    }
    if let Some(messages) = &mut record.messages {
        mark(&mut cut, cap(messages, MAX_ARRAY_ITEMS), "messages");
    }

    // 3. Total size. `size` is kept exact: each step subtracts what it removed. The limit leaves
    // room for the `truncated` list added at the end.
    let limit = MAX_RECORD_BYTES - TRUNCATED_RESERVE;
    let mut size = json_len(&*record);
    if size > limit {
        if let Some(messages) = &mut record.messages {
            for m in messages.iter_mut().skip(1).rev() {
                if size <= limit {
                    break;
                }
                if m.text.is_empty() {
                    continue;
                }
                let before = json_len(&m.text);
                m.text = marker(m.text.chars().count())
                    .trim_start_matches("… ")
                    .to_string();
                size = size + json_len(&m.text) - before;
                cut.insert("messages");
            }
            mark(
                &mut cut,
                pop_while_over(messages, 1, &mut size, limit),
                "messages",
            );
            if size > limit {
                if let Some(first) = messages.first_mut() {
                    let before = json_len(&first.text);
                    let excess = size - limit;
                    // A character is at least one byte of JSON: keeping `len - excess - marker`
                    // characters' worth of bytes is enough. Cut by bytes, on a char boundary.
                    let keep = first.text.len().saturating_sub(excess + 64);
                    let at = (0..=keep)
                        .rev()
                        .find(|&i| first.text.is_char_boundary(i))
                        .unwrap_or(0);
                    let chars = first.text[..at].chars().count();
                    if cut_chars(&mut first.text, chars) {
                        size = size + json_len(&first.text) - before;
                        cut.insert("messages");
                    }
                }
            }
        }
        if let Some(todos) = &mut record.todos {
            mark(
                &mut cut,
                pop_while_over(todos, 0, &mut size, limit),
                "todos",
            );
        }
        mark(
            &mut cut,
            pop_while_over(&mut record.children, 0, &mut size, limit),
            "children",
        );
        mark(
            &mut cut,
            pop_while_over(&mut record.tools, 0, &mut size, limit),
            "tools",
        );
        mark(
            &mut cut,
            pop_while_over(&mut record.skills, 0, &mut size, limit),
            "skills",
        );
        mark(
            &mut cut,
            pop_while_over(&mut record.models, 0, &mut size, limit),
            "models",
        );
    }

    if !cut.is_empty() {
        let mut all: BTreeSet<String> = record.truncated.drain(..).collect();
        all.extend(cut.into_iter().map(str::to_string));
        record.truncated = all.into_iter().collect();
    }
}

fn mark(cut: &mut BTreeSet<&'static str>, hit: bool, name: &'static str) {
    if hit {
        cut.insert(name);
    }
}

/// Keeps the first `max` items; true when any were dropped.
fn cap<T>(items: &mut Vec<T>, max: usize) -> bool {
    let over = items.len() > max;
    items.truncate(max);
    over
}

/// Pops items off the end while `size` is over `limit`, keeping at least `keep`; subtracts each
/// one's JSON (and its comma) from `size`. True when any were dropped.
fn pop_while_over<T: Serialize>(
    items: &mut Vec<T>,
    keep: usize,
    size: &mut usize,
    limit: usize,
) -> bool {
    let mut dropped = false;
    while *size > limit && items.len() > keep {
        let Some(last) = items.pop() else { break };
        let comma = usize::from(!items.is_empty());
        *size -= json_len(&last) + comma;
        dropped = true;
    }
    dropped
}

fn json_len<T: Serialize + ?Sized>(value: &T) -> usize {
    serde_json::to_vec(value).map_or(0, |v| v.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::record::*;

    /// The real record the Convex tests ingest (every optional field present).
    fn full() -> SessionExport {
        let text = include_str!("../../../convex/tests/fixtures/full-record.json");
        let mut r: SessionExport = serde_json::from_str(text).unwrap();
        r.truncated.clear();
        r
    }

    fn size(r: &SessionExport) -> usize {
        serde_json::to_vec(r).unwrap().len()
    }

    #[test]
    fn a_record_within_the_limits_is_left_alone() {
        let mut r = full();
        let before = r.clone();
        fit(&mut r);
        assert_eq!(r, before);
        assert!(!serde_json::to_string(&r).unwrap().contains("\"truncated\""));
    }

    #[test]
    fn long_strings_keep_their_start_and_carry_the_marker() {
        let mut r = full();
        r.title = "é".repeat(MAX_TITLE_CHARS + 10);
        r.error.as_mut().unwrap().message = "x".repeat(MAX_ERROR_CHARS + 1);
        r.todos.as_mut().unwrap()[0].content = "t".repeat(MAX_TODO_CHARS + 3);
        fit(&mut r);
        assert_eq!(
            r.title,
            format!(
                "{}… [truncated by opencode-telemetry: 10 more chars]",
                "é".repeat(MAX_TITLE_CHARS)
            )
        );
        assert!(r
            .error
            .as_ref()
            .unwrap()
            .message
            .ends_with("[truncated by opencode-telemetry: 1 more chars]"));
        assert!(r.todos.as_ref().unwrap()[0]
            .content
            .starts_with(&"t".repeat(MAX_TODO_CHARS)));
        assert_eq!(r.truncated, ["error", "title", "todos"]);
    }

    #[test]
    fn cut_chars_counts_characters_not_bytes() {
        let mut s = "ab€d".to_string();
        assert!(!cut_chars(&mut s, 4));
        assert!(cut_chars(&mut s, 3));
        assert_eq!(s, "ab€… [truncated by opencode-telemetry: 1 more chars]");
    }

    #[test]
    fn a_huge_transcript_is_cut_from_the_end_and_keeps_the_prompt_and_the_totals() {
        let mut r = full();
        let template = r.messages.as_ref().unwrap()[0].clone();
        let prompt = "what was asked ".repeat(100);
        let mut messages = Vec::new();
        for i in 0..400 {
            let mut m = template.clone();
            m.id = format!("msg_{i:04}");
            m.text = if i == 0 {
                prompt.clone()
            } else {
                "y".repeat(4000)
            };
            messages.push(m);
        }
        r.messages = Some(messages);
        let counts = (r.message_count, r.tokens, r.cost, r.todo_stats);
        assert!(size(&r) > 1_500_000);
        fit(&mut r);
        let json = serde_json::to_vec(&r).unwrap();
        assert!(json.len() <= MAX_RECORD_BYTES, "{}", json.len());
        let messages = r.messages.as_ref().unwrap();
        assert_eq!(messages.len(), 400, "texts go before whole messages");
        assert_eq!(messages[0].text, prompt);
        // The earliest texts survive, the latest are markers.
        assert_eq!(messages[1].text, "y".repeat(4000));
        assert_eq!(
            messages[399].text,
            "[truncated by opencode-telemetry: 4000 more chars]"
        );
        assert_eq!(r.truncated, ["messages"]);
        assert_eq!(counts, (r.message_count, r.tokens, r.cost, r.todo_stats));
        // Fitting a fitted record changes nothing.
        let again = r.clone();
        fit(&mut r);
        assert_eq!(r, again);
    }

    #[test]
    fn many_messages_are_dropped_from_the_end_and_a_huge_prompt_is_cut() {
        let mut r = full();
        let template = r.messages.as_ref().unwrap()[0].clone();
        let mut messages = vec![template.clone(); 20_000];
        messages[0].text = "p".repeat(2 * MAX_RECORD_BYTES);
        r.messages = Some(messages);
        fit(&mut r);
        assert!(size(&r) <= MAX_RECORD_BYTES, "{}", size(&r));
        let messages = r.messages.as_ref().unwrap();
        assert!(!messages.is_empty() && messages.len() <= MAX_ARRAY_ITEMS);
        assert!(messages[0].text.starts_with("ppp"));
        assert!(messages[0].text.ends_with("more chars]"));
        assert_eq!(r.truncated, ["messages"]);
    }

    #[test]
    fn many_children_and_todos_are_capped() {
        let mut r = full();
        let child = r.children[0].clone();
        r.children = vec![child; MAX_ARRAY_ITEMS + 5];
        let todo = r.todos.as_ref().unwrap()[0].clone();
        r.todos = Some(vec![todo; 9000]);
        r.messages = None;
        fit(&mut r);
        assert!(size(&r) <= MAX_RECORD_BYTES);
        assert!(r.children.len() <= MAX_ARRAY_ITEMS);
        assert!(r.todos.as_ref().unwrap().len() <= MAX_ARRAY_ITEMS);
        assert_eq!(r.truncated, ["children", "todos"]);
    }
}
