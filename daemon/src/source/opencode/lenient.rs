//! Lenient, lean field types for the JSON in `message.data` and `part.data`.
//!
//! OpenCode's JSON blobs hold far more than a record needs (tool output, file contents before
//! and after an edit, attachments as data URLs, whole API responses). The row types in
//! [`super::rows`] name only the fields the export reads; serde skips every other field without
//! allocating. The fields that were free-form (`state.input`, `state.metadata`, a message's
//! `summary` or `error.data`) use the wrappers here, which read a value of an unexpected type
//! as absent instead of failing the whole row, and which keep only what is needed of a long
//! string: its line count, its diff counts or a short prefix.
//!
//! Every wrapper accepts any JSON value: a map or array where a scalar was expected is
//! drained and reads as absent.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Every scalar visit of a lenient visitor returns the absent value (`Default`).
macro_rules! scalars_are_absent {
    () => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
}

/// Drains what is left of a map.
fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Drains what is left of an array.
fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// An object field: `Some` when the value is a JSON object (read as `T`, whose own fields must
/// be lenient too, so that reading it cannot fail), `None` for anything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lenient<T>(pub Option<T>);

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Lenient(None)
    }
}

impl<T> Lenient<T> {
    /// The object, when there was one.
    pub fn get(&self) -> Option<&T> {
        self.0.as_ref()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Lenient<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(|t| Lenient(Some(t)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                drain_seq(seq).map(|()| Lenient(None))
            }
            scalars_are_absent!();
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// An array of objects: the elements that are objects, each read as `T` (leniently, as
/// [`Lenient`]); empty for anything that is not an array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LenientVec<T>(pub Vec<T>);

impl<T> Default for LenientVec<T> {
    fn default() -> Self {
        LenientVec(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for LenientVec<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = LenientVec<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(Lenient(item)) = seq.next_element::<Lenient<T>>()? {
                    out.extend(item);
                }
                Ok(LenientVec(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                drain_map(map).map(|()| LenientVec(Vec::new()))
            }
            scalars_are_absent!();
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// What a lenient string field keeps of the string it reads.
pub trait FromJsonStr: Sized {
    /// Keeps what is needed of `s`.
    fn from_json_str(s: &str) -> Self;
}

impl FromJsonStr for String {
    fn from_json_str(s: &str) -> String {
        s.to_string()
    }
}

/// A string field: `Some` (what `T` keeps of it) when the value is a JSON string, `None` for
/// anything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LenientStr<T = String>(pub Option<T>);

impl<T> Default for LenientStr<T> {
    fn default() -> Self {
        LenientStr(None)
    }
}

impl<T> LenientStr<T> {
    /// What was kept, when the value was a string.
    pub fn get(&self) -> Option<&T> {
        self.0.as_ref()
    }
}

impl<'de, T: FromJsonStr> Deserialize<'de> for LenientStr<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: FromJsonStr> Visitor<'de> for V<T> {
            type Value = LenientStr<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(LenientStr(Some(T::from_json_str(s))))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                drain_map(map).map(|()| LenientStr(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                drain_seq(seq).map(|()| LenientStr(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// A scalar field of type `bool` or `u64`: `Some` when the value is of that JSON type (for
/// `u64`: a non-negative integer), `None` for anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LenientScalar<T>(pub Option<T>);

impl<T> Default for LenientScalar<T> {
    fn default() -> Self {
        LenientScalar(None)
    }
}

/// Scalars a [`LenientScalar`] reads.
pub trait Scalar: Sized {
    /// From a JSON boolean.
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
    /// From a JSON integer that fits `u64`.
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
}

impl Scalar for bool {
    fn from_bool(b: bool) -> Option<bool> {
        Some(b)
    }
}

impl Scalar for u64 {
    fn from_u64(n: u64) -> Option<u64> {
        Some(n)
    }
}

impl<'de, T: Scalar> Deserialize<'de> for LenientScalar<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Scalar> Visitor<'de> for V<T> {
            type Value = LenientScalar<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
                Ok(LenientScalar(T::from_bool(b)))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                Ok(LenientScalar(T::from_u64(n)))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                Ok(LenientScalar(u64::try_from(n).ok().and_then(T::from_u64)))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(LenientScalar(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(LenientScalar(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LenientScalar(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                drain_map(map).map(|()| LenientScalar(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                drain_seq(seq).map(|()| LenientScalar(None))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// The number of lines of a string, as `str::lines` counts them (a final newline ends the last
/// line; it does not start another). The string itself is not kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineCount(pub u64);

impl FromJsonStr for LineCount {
    fn from_json_str(s: &str) -> LineCount {
        LineCount(s.lines().count() as u64)
    }
}

/// The `+` and `-` lines of a unified diff, without the `+++` / `---` file headers. The diff
/// itself is not kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiffLines {
    /// Lines starting with `+`.
    pub additions: u64,
    /// Lines starting with `-`.
    pub deletions: u64,
}

impl FromJsonStr for DiffLines {
    fn from_json_str(diff: &str) -> DiffLines {
        let mut counts = DiffLines::default();
        for line in diff.lines() {
            if line.starts_with("+++") || line.starts_with("---") {
                continue;
            }
            if line.starts_with('+') {
                counts.additions += 1;
            } else if line.starts_with('-') {
                counts.deletions += 1;
            }
        }
        counts
    }
}

/// The first [`Prefix::MAX_BYTES`] bytes of a string (cut on a character boundary): enough to
/// recognise a known message, never a whole stack trace or tool output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prefix(pub String);

impl Prefix {
    /// How many bytes are kept.
    pub const MAX_BYTES: usize = 256;
}

impl FromJsonStr for Prefix {
    fn from_json_str(s: &str) -> Prefix {
        let mut end = s.len().min(Prefix::MAX_BYTES);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        Prefix(s[..end].to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, PartialEq, Deserialize)]
    #[serde(default)]
    struct Inner {
        name: LenientStr,
        n: LenientScalar<u64>,
    }

    #[derive(Debug, Default, PartialEq, Deserialize)]
    #[serde(default)]
    struct Outer {
        inner: Lenient<Inner>,
        list: LenientVec<Inner>,
        flag: LenientScalar<bool>,
        lines: LenientStr<LineCount>,
        diff: LenientStr<DiffLines>,
        error: LenientStr<Prefix>,
        after: LenientStr,
    }

    fn read(json: &str) -> Outer {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    /// Values of the expected type are kept; any other value reads as absent, and the fields
    /// after it are still read (a drained map or array leaves the parser in place).
    #[test]
    fn each_wrapper_reads_any_value() {
        let inner = |name: Option<&str>, n: Option<u64>| Inner {
            name: LenientStr(name.map(str::to_string)),
            n: LenientScalar(n),
        };
        let after = LenientStr(Some("kept".to_string()));
        let cases: Vec<(&str, Outer)> = vec![
            (
                r#"{"inner":{"name":"x","n":3},"after":"kept"}"#,
                Outer {
                    inner: Lenient(Some(inner(Some("x"), Some(3)))),
                    after: after.clone(),
                    ..Outer::default()
                },
            ),
            // Wrong types inside the object: those fields are absent.
            (
                r#"{"inner":{"name":7,"n":-1,"other":[1,{"a":2}]},"after":"kept"}"#,
                Outer {
                    inner: Lenient(Some(inner(None, None))),
                    after: after.clone(),
                    ..Outer::default()
                },
            ),
            (
                r#"{"inner":{"n":1.5,"name":{"deep":[1,2]}},"after":"kept"}"#,
                Outer {
                    inner: Lenient(Some(inner(None, None))),
                    after: after.clone(),
                    ..Outer::default()
                },
            ),
            // Not an object / not an array / not a string: absent.
            (
                r#"{"inner":[{"name":"x"}],"list":{"name":"x"},"flag":"yes","lines":["a"],"diff":{},"error":null,"after":"kept"}"#,
                Outer {
                    after: after.clone(),
                    ..Outer::default()
                },
            ),
            (
                r#"{"inner":"x","list":3,"flag":1,"lines":true,"diff":2,"error":false,"after":"kept"}"#,
                Outer {
                    after: after.clone(),
                    ..Outer::default()
                },
            ),
            // Arrays keep their object elements.
            (
                r#"{"list":[{"name":"a"},"b",null,[1],{"n":2}],"after":"kept"}"#,
                Outer {
                    list: LenientVec(vec![inner(Some("a"), None), inner(None, Some(2))]),
                    after: after.clone(),
                    ..Outer::default()
                },
            ),
            (
                r#"{"flag":true,"lines":"a\nb\n","diff":"--- a\n+++ b\n-x\n+y\n+z","after":"kept"}"#,
                Outer {
                    flag: LenientScalar(Some(true)),
                    lines: LenientStr(Some(LineCount(2))),
                    diff: LenientStr(Some(DiffLines {
                        additions: 2,
                        deletions: 1,
                    })),
                    after,
                    ..Outer::default()
                },
            ),
        ];
        for (json, want) in cases {
            assert_eq!(read(json), want, "{json}");
        }
    }

    /// `LineCount` counts as `str::lines` does.
    #[test]
    fn line_counts() {
        for (s, n) in [
            ("", 0),
            ("\n", 1),
            ("a", 1),
            ("a\n", 1),
            ("a\nb", 2),
            ("a\r\nb\r\n", 2),
            ("\n\n", 2),
        ] {
            assert_eq!(LineCount::from_json_str(s), LineCount(n), "{s:?}");
        }
    }

    /// `Prefix` keeps at most 256 bytes, cut on a character boundary.
    #[test]
    fn prefixes_are_cut_on_a_char_boundary() {
        let long = "é".repeat(200); // 400 bytes
        let p = Prefix::from_json_str(&long);
        assert_eq!(p.0.len(), 256);
        assert!(long.starts_with(&p.0));
        let odd = format!("a{long}"); // boundary at 257: cut to 255
        assert_eq!(Prefix::from_json_str(&odd).0.len(), 255);
        assert_eq!(Prefix::from_json_str("short").0, "short");
    }
}
