//! Redaction of secrets in the free text a record carries: each secret found becomes
//! `[redacted:<rule id>]`.
//!
//! **The rules are data**, compiled once per process (on first use) into one
//! [`regex::RegexSet`] that says which rules match a text at all, plus one [`Regex`] per rule
//! that finds where:
//!
//! - `redact/gitleaks.toml`: a subset of [gitleaks](https://github.com/gitleaks/gitleaks)' default
//!   rules (MIT, its licence in `redact/LICENSE-gitleaks`; the source commit is in the file's
//!   header; `redact/select.py` re-makes it from a newer `config/gitleaks.toml`): provider API
//!   keys (Anthropic, OpenAI, Hugging Face, Perplexity…), GitHub, GitLab and Slack tokens, AWS
//!   access key ids, cloud and package-registry tokens, JWTs, PEM private keys, credentials in
//!   `curl` commands. gitleaks writes Go RE2 regexes, which Rust's `regex` accepts as they are
//!   (no look-around, no back-references: a test compiles every rule). Left out: the rules that
//!   match only by a nearby keyword and a generic alphabet (`generic-api-key` and most
//!   `<vendor>-client-secret` rules) — too many false hits in prose — and gitleaks' allowlists
//!   (a redaction errs on the side of hiding a look-alike).
//! - `redact/rules.toml`: this project's own rules in the same format: `NAME=value` where the
//!   name looks secret (`AWS_SECRET_ACCESS_KEY=…`, `"password": "…"`), any PEM block (also one
//!   cut off before its `END` line by `export.max_message_chars`), `user:password@` in URLs,
//!   bearer tokens, AWS secret keys next to their name, `sk-…` API keys.
//!
//! A rule is applied as gitleaks applies it: its regex must match, one of its `keywords` (if it
//! has any) must occur in the text (case-insensitively), and the secret — the rule's
//! `secretGroup`, else the first capture group that matched, else the whole match — must have
//! at least the rule's Shannon `entropy` (bits per character) and must not match one of its
//! `allow` regexes (this project's rules only). Only the secret is replaced, so
//! `AWS_SECRET_ACCESS_KEY=[redacted:secret-assignment]` keeps the name. Overlapping hits of
//! several rules are merged into one replacement, named after the rule whose hit starts first
//! (on a tie the longer hit, then the rule first in file order: gitleaks' specific rules name a
//! token before this project's generic ones).
//!
//! The regexes run on the text's bytes with Unicode off, as RE2 runs gitleaks' rules (`\w`,
//! `\s`, `\d` and `(?i)` are ASCII), and a hit is widened to whole characters; non-ASCII text
//! around or inside a secret is kept intact.
//!
//! Cost: one `RegexSet` scan per text; the per-rule regexes run only for the rules that matched.
//! `cargo bench --bench redact` prints the figures: compiling the 104 rules takes about 17 ms
//! (once per process), scanning prose about 300 MB/s (a 4 KB message text: ~12 µs).

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::bytes::{Regex, RegexSet};
use serde::Deserialize;

/// The vendored gitleaks rules (see the module docs).
const GITLEAKS_RULES: &str = include_str!("redact/gitleaks.toml");
/// This project's rules (see the module docs).
const OWN_RULES: &str = include_str!("redact/rules.toml");

/// One rule as written in the rule files.
#[derive(Debug, Deserialize)]
struct RuleSpec {
    id: String,
    regex: String,
    #[serde(default, rename = "secretGroup")]
    secret_group: Option<usize>,
    #[serde(default)]
    entropy: Option<f64>,
    #[serde(default)]
    keywords: Vec<String>,
    #[serde(default)]
    allow: Vec<String>,
    // Read so the files keep it; not used.
    #[serde(default)]
    #[allow(dead_code)]
    description: String,
}

#[derive(Debug, Deserialize)]
struct RuleFile {
    rules: Vec<RuleSpec>,
}

/// One compiled rule.
#[derive(Debug)]
struct Rule {
    id: String,
    regex: Regex,
    secret_group: Option<usize>,
    entropy: Option<f64>,
    /// Lowercase.
    keywords: Vec<String>,
    allow: Vec<Regex>,
}

/// The compiled rule set (see the module docs).
#[derive(Debug)]
pub struct Redactor {
    set: RegexSet,
    rules: Vec<Rule>,
}

/// The rules of both files, compiled once.
static REDACTOR: LazyLock<Redactor> = LazyLock::new(|| {
    Redactor::from_files(&[GITLEAKS_RULES, OWN_RULES]).expect("the bundled redaction rules compile")
});

/// The process's redactor: the bundled rules, compiled on first use.
pub fn redactor() -> &'static Redactor {
    &REDACTOR
}

/// Why a rule file cannot be used (only for the bundled files, checked by the tests).
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// The file is not TOML of the expected shape.
    #[error("rule file: {0}")]
    File(#[from] toml::de::Error),
    /// A rule's regex does not compile.
    #[error("rule {id}: {error}")]
    Regex {
        /// The rule's `id`.
        id: String,
        /// What the regex compiler said.
        error: regex::Error,
    },
}

impl Redactor {
    /// Compiles the rules of `files` (TOML, the format of `redact/rules.toml`).
    ///
    /// # Errors
    /// [`RuleError`] naming the file problem or the rule whose regex does not compile.
    pub fn from_files(files: &[&str]) -> Result<Redactor, RuleError> {
        let mut rules = Vec::new();
        for text in files {
            let file: RuleFile = toml::from_str(text)?;
            for spec in file.rules {
                let compile = |re: &str| {
                    regex::bytes::RegexBuilder::new(re)
                        // As in Go's RE2, which gitleaks' rules are written for: `\w`, `\s`, `\d`
                        // and case folding are ASCII. It also keeps the automata small.
                        .unicode(false)
                        .size_limit(64 << 20)
                        .build()
                        .map_err(|error| RuleError::Regex {
                            id: spec.id.clone(),
                            error,
                        })
                };
                rules.push(Rule {
                    regex: compile(&spec.regex)?,
                    allow: spec
                        .allow
                        .iter()
                        .map(|a| compile(a))
                        .collect::<Result<_, _>>()?,
                    id: spec.id,
                    secret_group: spec.secret_group,
                    entropy: spec.entropy,
                    keywords: spec.keywords.iter().map(|k| k.to_lowercase()).collect(),
                });
            }
        }
        let set = regex::bytes::RegexSetBuilder::new(rules.iter().map(|r| r.regex.as_str()))
            .unicode(false)
            .size_limit(256 << 20)
            .dfa_size_limit(64 << 20)
            .build()
            .map_err(|error| RuleError::Regex {
                id: "(the set of all rules)".into(),
                error,
            })?;
        Ok(Redactor { set, rules })
    }

    /// The ids of the rules, in order.
    pub fn rule_ids(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.id.as_str())
    }

    /// `text` with every secret replaced by `[redacted:<rule id>]`, and the number of
    /// replacements. Borrows `text` when nothing was found.
    pub fn redact<'t>(&self, text: &'t str) -> (Cow<'t, str>, usize) {
        let bytes = text.as_bytes();
        let matched = self.set.matches(bytes);
        if !matched.matched_any() {
            return (Cow::Borrowed(text), 0);
        }
        let lower = text.to_lowercase();
        // (start, end, rule index) of each secret found.
        let mut hits: Vec<(usize, usize, usize)> = Vec::new();
        for i in matched.iter() {
            let rule = &self.rules[i];
            if !rule.keywords.is_empty() && !rule.keywords.iter().any(|k| lower.contains(k)) {
                continue;
            }
            for caps in rule.regex.captures_iter(bytes) {
                let secret = match rule.secret_group {
                    Some(g) => caps.get(g),
                    None => caps
                        .iter()
                        .skip(1)
                        .flatten()
                        .find(|m| !m.is_empty())
                        .or_else(|| caps.get(0)),
                };
                let Some(secret) = secret.filter(|m| !m.is_empty()) else {
                    continue;
                };
                // The regexes work on bytes (ASCII classes): widen a hit to whole characters.
                let (mut start, mut end) = (secret.start(), secret.end());
                while !text.is_char_boundary(start) {
                    start -= 1;
                }
                while !text.is_char_boundary(end) {
                    end += 1;
                }
                let value = &text[start..end];
                if rule.entropy.is_some_and(|min| shannon_entropy(value) < min) {
                    continue;
                }
                if rule.allow.iter().any(|a| a.is_match(value.as_bytes())) {
                    continue;
                }
                hits.push((start, end, i));
            }
        }
        if hits.is_empty() {
            return (Cow::Borrowed(text), 0);
        }
        hits.sort_by_key(|&(start, end, _)| (start, std::cmp::Reverse(end)));
        let mut merged: Vec<(usize, usize, usize)> = Vec::with_capacity(hits.len());
        for hit in hits {
            match merged.last_mut() {
                Some(last) if hit.0 < last.1 => last.1 = last.1.max(hit.1),
                _ => merged.push(hit),
            }
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for &(start, end, rule) in &merged {
            out.push_str(&text[at..start]);
            out.push_str("[redacted:");
            out.push_str(&self.rules[rule].id);
            out.push(']');
            at = end;
        }
        out.push_str(&text[at..]);
        (Cow::Owned(out), merged.len())
    }
}

/// Shannon entropy of `s` in bits per character (gitleaks' `entropy`): 0 for an empty string.
pub fn shannon_entropy(s: &str) -> f64 {
    let mut counts = std::collections::HashMap::new();
    let mut n = 0usize;
    for c in s.chars() {
        *counts.entry(c).or_insert(0usize) += 1;
        n += 1;
    }
    if n == 0 {
        return 0.0;
    }
    counts
        .values()
        .map(|&k| {
            let p = k as f64 / n as f64;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests;
