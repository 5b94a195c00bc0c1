//! The start of one long string field of a JSON object, read from a stream in bounded memory.
//!
//! serde_json materialises every string it hands to a visitor, so a text part of 60 MB costs
//! 60 MB even when only its first few thousand characters are exported. For `part.data`
//! values too large to come inline with their row (see [`super::sql`]), the message text is
//! read here instead: a small scanner walks the object's top-level keys, skips every other
//! value byte by byte, and decodes the wanted string keeping only its first `max_chars`
//! characters while counting all of them. Memory is the reader's buffer plus `max_chars`.
//!
//! The value was already parsed once by serde_json (for the part's other fields), so the
//! input is known to be a JSON object; malformed input still gives an error, never a panic.

use std::io::{self, BufRead};

/// The first `max_chars` characters of the top-level string field `key` of the JSON object
/// read from `r`, and its length in characters (as `str::chars` counts the decoded string).
/// `None` when the object has no such field or its value is not a string.
///
/// # Errors
/// IO errors of `r`, and [`io::ErrorKind::InvalidData`] for input that is not a JSON object.
pub fn string_field_prefix(
    r: impl BufRead,
    key: &str,
    max_chars: usize,
) -> io::Result<Option<(String, usize)>> {
    let mut s = Scanner { r };
    s.expect(b'{')?;
    if s.peek_non_ws()? == Some(b'}') {
        return Ok(None);
    }
    let key_chars = key.chars().count();
    loop {
        s.expect(b'"')?;
        let (name, name_chars) = s.string(key_chars + 1)?;
        s.expect(b':')?;
        if name_chars == key_chars && name == key {
            if s.peek_non_ws()? == Some(b'"') {
                s.bump();
                return s.string(max_chars).map(Some);
            }
            return Ok(None);
        }
        s.skip_value()?;
        match s.next_non_ws()? {
            Some(b',') => s.skip_ws()?,
            Some(b'}') => return Ok(None),
            _ => return Err(invalid("expected `,` or `}`")),
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

struct Scanner<R> {
    r: R,
}

impl<R: BufRead> Scanner<R> {
    fn peek(&mut self) -> io::Result<Option<u8>> {
        Ok(self.r.fill_buf()?.first().copied())
    }

    fn bump(&mut self) {
        self.r.consume(1);
    }

    fn next(&mut self) -> io::Result<Option<u8>> {
        let b = self.peek()?;
        if b.is_some() {
            self.bump();
        }
        Ok(b)
    }

    fn next_or_eof(&mut self) -> io::Result<u8> {
        self.next()?
            .ok_or_else(|| invalid("unexpected end of input"))
    }

    fn skip_ws(&mut self) -> io::Result<()> {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek()? {
            self.bump();
        }
        Ok(())
    }

    fn peek_non_ws(&mut self) -> io::Result<Option<u8>> {
        self.skip_ws()?;
        self.peek()
    }

    fn next_non_ws(&mut self) -> io::Result<Option<u8>> {
        self.skip_ws()?;
        self.next()
    }

    fn expect(&mut self, want: u8) -> io::Result<()> {
        match self.next_non_ws()? {
            Some(b) if b == want => Ok(()),
            _ => Err(invalid("unexpected character")),
        }
    }

    /// The rest of a string whose opening quote was read: its first `keep` characters and its
    /// length in characters.
    fn string(&mut self, keep: usize) -> io::Result<(String, usize)> {
        let mut kept: Vec<u8> = Vec::new();
        let mut chars = 0usize;
        // Whether the bytes of the current (multi-byte) character are kept.
        let mut keeping = false;
        loop {
            let b = self.next_or_eof()?;
            match b {
                b'"' => break,
                b'\\' => {
                    let c = self.escape()?;
                    if chars < keep {
                        let mut buf = [0u8; 4];
                        kept.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                    chars += 1;
                    keeping = false;
                }
                _ if b & 0xC0 == 0x80 => {
                    // A continuation byte: kept with the character it continues.
                    if keeping {
                        kept.push(b);
                    }
                }
                _ => {
                    keeping = chars < keep;
                    if keeping {
                        kept.push(b);
                    }
                    chars += 1;
                }
            }
        }
        Ok((String::from_utf8_lossy(&kept).into_owned(), chars))
    }

    /// An escape after its backslash, decoded (`\uXXXX` surrogate pairs joined; a lone
    /// surrogate becomes U+FFFD).
    fn escape(&mut self) -> io::Result<char> {
        Ok(match self.next_or_eof()? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let first = self.hex4()?;
                if (0xD800..0xDC00).contains(&first) {
                    if self.peek()? != Some(b'\\') {
                        return Ok(char::REPLACEMENT_CHARACTER);
                    }
                    self.bump();
                    if self.next_or_eof()? != b'u' {
                        return Err(invalid("bad escape"));
                    }
                    let second = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&second) {
                        return Ok(char::REPLACEMENT_CHARACTER);
                    }
                    let c = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
                    char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER)
                } else {
                    char::from_u32(first).unwrap_or(char::REPLACEMENT_CHARACTER)
                }
            }
            _ => return Err(invalid("bad escape")),
        })
    }

    fn hex4(&mut self) -> io::Result<u32> {
        let mut n = 0;
        for _ in 0..4 {
            let d = (self.next_or_eof()? as char)
                .to_digit(16)
                .ok_or_else(|| invalid("bad \\u escape"))?;
            n = n * 16 + d;
        }
        Ok(n)
    }

    /// Skips one value (after optional whitespace): a string, object, array or literal.
    fn skip_value(&mut self) -> io::Result<()> {
        let mut depth = 0usize;
        loop {
            match self.next_non_ws()? {
                Some(b'"') => {
                    self.string(0)?;
                }
                Some(b'{' | b'[') => depth += 1,
                Some(b'}' | b']') => {
                    depth = depth.checked_sub(1).ok_or_else(|| invalid("unbalanced"))?;
                }
                Some(b',' | b':') if depth > 0 => {}
                Some(_) => {
                    // A number or literal: up to the next delimiter.
                    while let Some(b) = self.peek()? {
                        if matches!(b, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t') {
                            break;
                        }
                        self.bump();
                    }
                }
                None => return Err(invalid("unexpected end of input")),
            }
            if depth == 0 {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::string_field_prefix;

    /// Ground truth: serde_json's full parse of the same input, cut to `max` characters.
    fn truth(json: &str, key: &str, max: usize) -> Option<(String, usize)> {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        let s = v.get(key)?.as_str()?;
        Some((s.chars().take(max).collect(), s.chars().count()))
    }

    #[test]
    fn prefixes_match_a_full_parse() {
        let long = format!(
            r#"{{"id":"prt_1","type":"text","text":"{}","time":{{"start":1}}}}"#,
            "ab\\nc\\u00e9 ".repeat(5000)
        );
        let inputs = [
            r#"{"type":"text","text":"hello world"}"#,
            r#"{ "text" : "first" , "type": "text" }"#,
            r#"{"type":"tool","state":{"text":"nested, not top level","input":{"a":[1,2,{"text":"x"}]}},"text":"top"}"#,
            r#"{"a":[1,-2.5e3,true,false,null,"s\"}]"],"b":{"c":{}},"text":"after \"quotes\" and \\ and \/"}"#,
            r#"{"text":"é日本語🎉 multi-byte"}"#,
            r#"{"text":"\ud83c\udf89 pair, \u0041"}"#,
            r#"{"text":"tabs\tand\r\nnewlines\b\f"}"#,
            r#"{"text":""}"#,
            r#"{"text":42}"#,
            r#"{"text":{"value":"x"}}"#,
            r#"{"texts":"no","tex":"no"}"#,
            r#"{}"#,
            long.as_str(),
        ];
        for json in inputs {
            for max in [0, 1, 3, 10, 4000, usize::MAX] {
                let got = string_field_prefix(json.as_bytes(), "text", max).unwrap();
                assert_eq!(got, truth(json, "text", max), "{json} max {max}");
            }
        }
    }

    /// A lone surrogate (which serde_json refuses) decodes as U+FFFD.
    #[test]
    fn lone_surrogates_become_replacement_characters() {
        let got = string_field_prefix(r#"{"text":"a\ud800b\udc00"}"#.as_bytes(), "text", 9);
        assert_eq!(got.unwrap(), Some(("a\u{fffd}b\u{fffd}".to_string(), 4)));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for json in [
            "",
            "[",
            "{",
            r#"{"text""#,
            r#"{"a":1"#,
            r#"{"text":"open"#,
            r#"{"a":]}"#,
            r#"{"text":"\x"}"#,
        ] {
            assert!(
                string_field_prefix(json.as_bytes(), "text", 10).is_err(),
                "{json}"
            );
        }
    }
}
