//! The redaction rules against a corpus of real-shaped secrets (generated here, none real) and
//! of look-alikes that must survive.

use super::*;

/// A deterministic generator of token characters (xorshift), so a failing case can be rerun.
pub(crate) struct Gen(u64);

impl Gen {
    pub(crate) fn new(seed: u64) -> Gen {
        Gen(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// `n` characters drawn from `alphabet`.
    pub(crate) fn pick(&mut self, alphabet: &str, n: usize) -> String {
        let a: Vec<char> = alphabet.chars().collect();
        (0..n)
            .map(|_| a[(self.next() % a.len() as u64) as usize])
            .collect()
    }
}

const ALNUM: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const HEX: &str = "0123456789abcdef";
const B64URL: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";

/// (kind, a secret of that kind's real shape). Each is what a provider issues, by its
/// documented format; the rule that should catch it is the kind.
pub(crate) fn secret_corpus(seed: u64) -> Vec<(&'static str, String)> {
    let mut g = Gen::new(seed);
    let b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let jwt_part = |g: &mut Gen, n| format!("ey{}", g.pick(ALNUM, n));
    vec![
        (
            "aws-access-token",
            format!("AKIA{}", g.pick("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)),
        ),
        (
            "secret-assignment",
            format!(
                "AWS_SECRET_ACCESS_KEY={}",
                g.pick(&format!("{ALNUM}/+"), 40)
            ),
        ),
        ("github-pat", format!("ghp_{}", g.pick(ALNUM, 36))),
        (
            "github-fine-grained-pat",
            format!("github_pat_{}", g.pick(&format!("{ALNUM}_"), 82)),
        ),
        ("github-oauth", format!("gho_{}", g.pick(ALNUM, 36))),
        ("gitlab-pat", format!("glpat-{}", g.pick(ALNUM, 20))),
        (
            "slack-bot-token",
            format!(
                "xoxb-{}-{}-{}",
                g.pick("0123456789", 12),
                g.pick("0123456789", 13),
                g.pick(ALNUM, 24)
            ),
        ),
        (
            "slack-webhook-url",
            format!(
                "https://hooks.slack.com/services/T{}/B{}/{}",
                g.pick("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 8),
                g.pick("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 10),
                g.pick(ALNUM, 24)
            ),
        ),
        (
            "openai-api-key",
            format!(
                "sk-proj-{}T3BlbkFJ{}",
                g.pick(B64URL, 74),
                g.pick(B64URL, 74)
            ),
        ),
        // The shape the issue planted: `sk-proj-` without the marker.
        ("sk-api-key", format!("sk-proj-{}", g.pick(B64URL, 48))),
        (
            "anthropic-api-key",
            format!("sk-ant-api03-{}AA", g.pick(B64URL, 93)),
        ),
        ("sk-api-key", format!("sk-or-v1-{}", g.pick(HEX, 64))),
        (
            "huggingface-access-token",
            format!(
                "hf_{}",
                g.pick("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", 34)
            ),
        ),
        (
            "stripe-access-token",
            format!("sk_live_{}", g.pick(ALNUM, 24)),
        ),
        ("npm-access-token", format!("npm_{}", g.pick(ALNUM, 36))),
        (
            "jwt",
            format!(
                "{}.{}.{}",
                jwt_part(&mut g, 30),
                jwt_part(&mut g, 60),
                g.pick(B64URL, 43)
            ),
        ),
        (
            "private-key",
            format!(
                "-----BEGIN RSA PRIVATE KEY-----\n{}\n{}\n-----END RSA PRIVATE KEY-----",
                g.pick(b64, 64),
                g.pick(b64, 64)
            ),
        ),
        (
            "pem-block",
            format!(
                "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n{}",
                g.pick(b64, 70),
                g.pick(b64, 30)
            ),
        ),
        (
            "url-credentials",
            format!(
                "postgres://admin:{}@db.internal:5432/app",
                g.pick(ALNUM, 16)
            ),
        ),
        (
            "bearer-token",
            format!("Authorization: Bearer {}", g.pick(B64URL, 40)),
        ),
        (
            "secret-assignment",
            format!("\"password\": \"{}\"", g.pick(ALNUM, 14)),
        ),
        (
            "secret-assignment",
            format!("DATABASE_PASSWORD={}", g.pick(ALNUM, 18)),
        ),
        ("digitalocean-pat", format!("dop_v1_{}", g.pick(HEX, 64))),
        (
            "pypi-upload-token",
            format!("pypi-AgEIcHlwaS5vcmc{}", g.pick(B64URL, 60)),
        ),
    ]
}

/// The secret part of a corpus entry: what must not survive (the name of a `NAME=value` may).
pub(crate) fn secret_part(s: &str) -> &str {
    for sep in ["=", "\": \"", "Bearer ", "admin:"] {
        if let Some((_, v)) = s.split_once(sep) {
            return v.trim_end_matches('"').split('@').next().unwrap();
        }
    }
    s
}

/// Strings that look like secrets to a naive rule but are not: they must come out unchanged.
fn look_alikes() -> Vec<String> {
    use sha2::Digest;
    let sha256 = hex::encode(sha2::Sha256::digest(b"look-alike"));
    let commit = hex::encode(&sha2::Sha256::digest(b"commit")[..20]);
    vec![
        format!("sha256 {sha256}"),
        format!("fixed in commit {commit} yesterday"),
        "request 3f2b8c1e-9d4a-4b7e-8f61-0c2d5e7a9b13 failed".to_string(),
        // base64 of a non-secret sentence.
        "data: VGhpcyBpcyBqdXN0IGEgc2VudGVuY2UsIG5vdCBhIHNlY3JldC4=".to_string(),
        "the session id is ses_2f7e4c1a9b3dffe1Qw8RtYpLmN".to_string(),
        "max_tokens: 4096, input_tokens=1234567".to_string(),
        "set the token in the credentials file, then restart".to_string(),
        "password: <your password>".to_string(),
        "API_KEY=${API_KEY}".to_string(),
        "ask-the-user-before-deleting-files".to_string(),
        "task-list-item-renderer-component".to_string(),
        "/home/user/src/project/README.md".to_string(),
        "https://example.com/path?query=1".to_string(),
        "-----BEGIN is how a PEM header starts".to_string(),
        "Bearer tokens expire".to_string(),
        "eyes on the screen".to_string(),
        "0123456789abcdef0123456789abcdef".to_string(),
    ]
}

#[test]
fn every_bundled_rule_compiles_and_ids_are_unique() {
    let r = redactor();
    let ids: Vec<&str> = r.rule_ids().collect();
    assert!(ids.len() > 90, "{} rules", ids.len());
    let unique: std::collections::BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "duplicate rule ids");
}

#[test]
fn every_secret_of_the_corpus_is_replaced_by_its_kind() {
    for seed in 1..=20 {
        for (kind, secret) in secret_corpus(seed) {
            let text = format!("before {secret} after");
            let (out, n) = redactor().redact(&text);
            assert!(
                !out.contains(secret_part(&secret)),
                "seed {seed}: {kind} survived: {out}"
            );
            assert!(
                out.contains(&format!("[redacted:{kind}]")),
                "seed {seed}: {kind} named otherwise: {out}"
            );
            assert!(out.starts_with("before ") && out.ends_with(" after") || kind == "pem-block");
            assert!(n >= 1);
        }
    }
}

#[test]
fn look_alikes_survive_unchanged() {
    for text in look_alikes() {
        let (out, n) = redactor().redact(&text);
        assert_eq!(out, text, "redacted a look-alike");
        assert_eq!(n, 0);
    }
}

#[test]
fn a_name_stays_and_only_its_value_is_replaced() {
    let (out, n) = redactor().redact("export GITHUB_TOKEN=abcd1234efgh5678 && make");
    assert_eq!(
        out,
        "export GITHUB_TOKEN=[redacted:secret-assignment] && make"
    );
    assert_eq!(n, 1);
}

#[test]
fn overlapping_hits_become_one_replacement_and_each_is_counted_once() {
    let mut g = Gen::new(7);
    let pat = format!("ghp_{}", g.pick(ALNUM, 36));
    // Both github-pat and secret-assignment match the first one: the gitleaks rule names it.
    let text = format!("GH_TOKEN={pat}\nand again {pat}.");
    let (out, n) = redactor().redact(&text);
    assert_eq!(
        out,
        "GH_TOKEN=[redacted:github-pat]\nand again [redacted:github-pat]."
    );
    assert_eq!(n, 2);
}

#[test]
fn entropy_is_shannons_in_bits_per_character() {
    // Independent values: log2 of the alphabet size for uniform strings.
    assert_eq!(shannon_entropy(""), 0.0);
    assert_eq!(shannon_entropy("aaaa"), 0.0);
    assert!((shannon_entropy("abab") - 1.0).abs() < 1e-12);
    assert!((shannon_entropy("abcdefgh") - 3.0).abs() < 1e-12);
}

#[test]
fn text_around_and_inside_a_secret_may_be_any_unicode() {
    // The rules match bytes with ASCII classes (as RE2 does); hits are widened to whole
    // characters, so multi-byte text never splits and the rest survives as it was.
    let (out, n) = redactor().redact("mot de passe: password=sécrét-ünïcødé ✓ — fini");
    assert_eq!(
        out,
        "mot de passe: password=[redacted:secret-assignment] ✓ — fini"
    );
    assert_eq!(n, 1);
    for (kind, secret) in secret_corpus(3) {
        for around in ["日本語", "ü", "🦀", "\u{301}"] {
            let text = format!("{around} {secret}\n{around} ok");
            let (out, _) = redactor().redact(&text);
            assert!(
                !out.contains(secret_part(&secret)),
                "{kind} next to {around:?}: {out}"
            );
            // Glued to the secret (some rules then see no token boundary, as in gitleaks; a
            // `NAME=value` value runs to the next space): whatever is found, the replacement
            // falls on whole characters (slicing elsewhere would panic).
            let glued = format!("{around}{secret}{around}");
            let (out, _) = redactor().redact(&glued);
            assert!(out.starts_with(around), "{out}");
        }
    }
}
