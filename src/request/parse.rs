//! Parse the request body once, into a `serde_json::Value`, refusing input that different
//! JSON parsers would read differently.
//!
//! Why a custom visitor rather than `serde_json::from_slice::<Value>`:
//! - **Duplicate keys.** serde_json keeps the last value silently, and so does Python's
//!   `json` (vLLM). A proxy that validates one copy while the worker reads another is a
//!   smuggling hole, so a duplicate key anywhere is an error.
//! - **Depth.** Bounded by `JsonLimits::max_depth` (serde_json's own limit is 128).
//! - **String length.** Bounded by `JsonLimits::max_string_bytes`, keys included.
//!
//! Other places where parsers disagree are already closed by serde_json: `NaN`/`Infinity`
//! (Python accepts them), lone surrogate escapes (Python accepts), raw control characters,
//! trailing data. The body must be UTF-8 (Python would also sniff UTF-16/32).
//!
//! Every error carries the byte offset where the problem is, for the client's message.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

/// Limits on the shape of a body, applied while parsing. Embeds in config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JsonLimits {
    /// Most nested arrays/objects, the top-level object counting as 1. Default 64: a chat
    /// request needs about 8 (a tool's JSON schema a few more); serde_json itself stops at
    /// 128, so values above 127 behave as 127.
    pub max_depth: usize,
    /// Longest string (value or key) in bytes after unescaping. Default 32 MiB: large enough
    /// for a base64 data URL of a multi-megabyte image, which is the longest legitimate
    /// string in a chat request. The body-size limit in front of the parser remains the
    /// real memory bound; this one only catches a single absurd string inside it.
    pub max_string_bytes: usize,
}

impl Default for JsonLimits {
    fn default() -> Self {
        JsonLimits {
            max_depth: 64,
            max_string_bytes: 32 * 1024 * 1024,
        }
    }
}

/// Why a body could not be parsed, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} at byte {offset}")]
pub struct BodyError {
    pub kind: BodyErrorKind,
    /// 0-based byte offset into the body: the offending byte, the start of the offending
    /// key or string, or the body's length when it ends too early.
    pub offset: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyErrorKind {
    /// The bytes are not UTF-8; `offset` is the first byte of the bad sequence.
    InvalidUtf8,
    /// The body ends inside a value (an empty body is this at offset 0).
    UnexpectedEof,
    /// A raw control character (U+0000–U+001F) inside a string.
    ControlCharacter,
    /// Non-whitespace after the top-level object.
    TrailingCharacters,
    /// Nesting deeper than `JsonLimits::max_depth`; `offset` is the opening bracket.
    TooDeep { max_depth: usize },
    /// A string longer than `JsonLimits::max_string_bytes`; `offset` is its opening quote.
    StringTooLong { max_bytes: usize },
    /// The same key twice in one object; `offset` is the second occurrence's opening quote.
    DuplicateKey(String),
    /// Valid JSON, but the top level is not an object; `offset` is its first byte.
    NotAnObject,
    /// Any other JSON syntax error, described by serde_json.
    Syntax(String),
}

impl fmt::Display for BodyErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyErrorKind::InvalidUtf8 => f.write_str("invalid UTF-8"),
            BodyErrorKind::UnexpectedEof => f.write_str("unexpected end of the body"),
            BodyErrorKind::ControlCharacter => {
                f.write_str("control character (U+0000 to U+001F) inside a string")
            }
            BodyErrorKind::TrailingCharacters => f.write_str("trailing characters"),
            BodyErrorKind::TooDeep { max_depth } => {
                write!(f, "nesting deeper than {max_depth} levels")
            }
            BodyErrorKind::StringTooLong { max_bytes } => {
                write!(f, "string longer than {max_bytes} bytes")
            }
            BodyErrorKind::DuplicateKey(k) => {
                let shown: String = k.chars().take(64).collect();
                write!(f, "duplicate key '{shown}'")
            }
            BodyErrorKind::NotAnObject => f.write_str("the body must be a JSON object"),
            BodyErrorKind::Syntax(msg) => f.write_str(msg),
        }
    }
}

impl BodyErrorKind {
    /// A stable snake_case name for the kind (logs, metrics, test fixtures).
    pub fn code(&self) -> &'static str {
        match self {
            BodyErrorKind::InvalidUtf8 => "invalid_utf8",
            BodyErrorKind::UnexpectedEof => "unexpected_eof",
            BodyErrorKind::ControlCharacter => "control_character",
            BodyErrorKind::TrailingCharacters => "trailing_characters",
            BodyErrorKind::TooDeep { .. } => "too_deep",
            BodyErrorKind::StringTooLong { .. } => "string_too_long",
            BodyErrorKind::DuplicateKey(_) => "duplicate_key",
            BodyErrorKind::NotAnObject => "not_an_object",
            BodyErrorKind::Syntax(_) => "invalid_json",
        }
    }
}

impl BodyError {
    /// The message for the client (400, `invalid_request_error`, param null).
    pub fn client_message(&self) -> String {
        format!(
            "We could not parse the JSON body of your request: {}.",
            self
        )
    }
}

/// Parse `bytes` into a `Value`: a JSON object, no duplicate keys anywhere, within `limits`.
pub fn parse_body(bytes: &[u8], limits: &JsonLimits) -> Result<Value, BodyError> {
    // UTF-8 first, over the whole body: exact offsets, and serde_json can then use its
    // `&str` reader, which does not re-validate strings.
    let text = std::str::from_utf8(bytes).map_err(|e| BodyError {
        kind: BodyErrorKind::InvalidUtf8,
        offset: e.valid_up_to(),
    })?;

    // The top level must be an object: say so at once rather than parse a huge array.
    let first = bytes.iter().position(|b| !is_json_ws(*b));
    match first {
        None => {
            return Err(BodyError {
                kind: BodyErrorKind::UnexpectedEof,
                offset: bytes.len(),
            })
        }
        Some(at) if bytes.get(at) != Some(&b'{') => {
            return Err(BodyError {
                kind: BodyErrorKind::NotAnObject,
                offset: at,
            })
        }
        Some(_) => {}
    }

    let violation: Cell<Option<Violation>> = Cell::new(None);
    let seed = ValueSeed {
        depth: 1,
        limits,
        violation: &violation,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let value = match seed.deserialize(&mut de) {
        Ok(v) => v,
        Err(e) => return Err(convert(&e, text, violation.take(), limits)),
    };
    if let Err(e) = de.end() {
        return Err(BodyError {
            kind: BodyErrorKind::TrailingCharacters,
            offset: error_offset(&e, text),
        });
    }
    Ok(value)
}

fn is_json_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// A rule our visitor broke; the serde_json error only carries its position.
enum Violation {
    TooDeep,
    StringTooLong,
    DuplicateKey(String),
}

/// serde_json reports (line, column) with a 1-based column pointing at the offending byte
/// (or one past the end at EOF); turn it into a 0-based byte offset.
fn error_offset(e: &serde_json::Error, text: &str) -> usize {
    let bytes = text.as_bytes();
    let line = e.line();
    if line == 0 {
        return 0;
    }
    let line_start = if line == 1 {
        0
    } else {
        memchr::memchr_iter(b'\n', bytes)
            .nth(line - 2)
            .map_or(bytes.len(), |p| p + 1)
    };
    (line_start + e.column().saturating_sub(1)).min(bytes.len())
}

/// Where the JSON string whose closing quote is at `close` opens: the nearest `"` before it
/// that is not escaped (preceded by an even number of backslashes).
fn string_start(bytes: &[u8], close: usize) -> Option<usize> {
    let mut end = close.min(bytes.len());
    while let Some(q) = memchr::memrchr(b'"', bytes.get(..end)?) {
        let backslashes = bytes
            .get(..q)?
            .iter()
            .rev()
            .take_while(|b| **b == b'\\')
            .count();
        if backslashes % 2 == 0 {
            return Some(q);
        }
        end = q;
    }
    None
}

fn convert(
    e: &serde_json::Error,
    text: &str,
    violation: Option<Violation>,
    limits: &JsonLimits,
) -> BodyError {
    let at = error_offset(e, text);
    let max_depth = limits.max_depth.min(SERDE_JSON_MAX_DEPTH);
    let bytes = text.as_bytes();
    match violation {
        // The visitor returns just after it consumed the token; serde_json's position is
        // then the byte after it, `at` the token's last byte.
        Some(Violation::TooDeep) => BodyError {
            kind: BodyErrorKind::TooDeep { max_depth },
            offset: at,
        },
        Some(Violation::StringTooLong) => BodyError {
            kind: BodyErrorKind::StringTooLong {
                max_bytes: limits.max_string_bytes,
            },
            offset: string_start(bytes, at).unwrap_or(at),
        },
        Some(Violation::DuplicateKey(k)) => BodyError {
            kind: BodyErrorKind::DuplicateKey(k),
            offset: string_start(bytes, at).unwrap_or(at),
        },
        None => {
            let kind = match e.classify() {
                serde_json::error::Category::Eof => BodyErrorKind::UnexpectedEof,
                _ => classify_syntax(e, max_depth),
            };
            let offset = if kind == BodyErrorKind::UnexpectedEof {
                text.len()
            } else {
                at
            };
            BodyError { kind, offset }
        }
    }
}

/// serde_json does not expose its error codes; its messages are stable and pinned by the
/// tests below.
fn classify_syntax(e: &serde_json::Error, max_depth: usize) -> BodyErrorKind {
    let full = e.to_string();
    let msg = full
        .rsplit_once(" at line ")
        .map_or(full.as_str(), |(m, _)| m);
    if msg.starts_with("control character") {
        BodyErrorKind::ControlCharacter
    } else if msg == "recursion limit exceeded" {
        BodyErrorKind::TooDeep { max_depth }
    } else {
        BodyErrorKind::Syntax(msg.to_owned())
    }
}

/// serde_json refuses the 128th nested container on its own (its recursion limit).
const SERDE_JSON_MAX_DEPTH: usize = 127;

struct ValueSeed<'a> {
    depth: usize,
    limits: &'a JsonLimits,
    violation: &'a Cell<Option<Violation>>,
}

impl<'a> ValueSeed<'a> {
    fn child(&self) -> ValueSeed<'a> {
        ValueSeed {
            depth: self.depth + 1,
            limits: self.limits,
            violation: self.violation,
        }
    }

    fn fail<E: de::Error>(&self, v: Violation) -> E {
        self.violation.set(Some(v));
        E::custom("request body violates a parse limit")
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Value, E> {
        // serde_json never produces a non-finite float from text; stay total anyway.
        Number::from_f64(n)
            .map(Value::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        if s.len() > self.limits.max_string_bytes {
            return Err(self.fail(Violation::StringTooLong));
        }
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        if s.len() > self.limits.max_string_bytes {
            return Err(self.fail(Violation::StringTooLong));
        }
        Ok(Value::String(s))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        if self.depth > self.limits.max_depth {
            return Err(self.fail(Violation::TooDeep));
        }
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self.child())? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        if self.depth > self.limits.max_depth {
            return Err(self.fail(Violation::TooDeep));
        }
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(KeySeed {
            max_bytes: self.limits.max_string_bytes,
            violation: self.violation,
        })? {
            match out.entry(key) {
                Entry::Occupied(o) => {
                    let key = o.key().clone();
                    return Err(self.fail(Violation::DuplicateKey(key)));
                }
                Entry::Vacant(slot) => {
                    let v = map.next_value_seed(self.child())?;
                    slot.insert(v);
                }
            }
        }
        Ok(Value::Object(out))
    }
}

struct KeySeed<'a> {
    max_bytes: usize,
    violation: &'a Cell<Option<Violation>>,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = String;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<String, E> {
        if s.len() > self.max_bytes {
            self.violation.set(Some(Violation::StringTooLong));
            return Err(E::custom("request body violates a parse limit"));
        }
        Ok(s.to_owned())
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<String, E> {
        if s.len() > self.max_bytes {
            self.violation.set(Some(Violation::StringTooLong));
            return Err(E::custom("request body violates a parse limit"));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> BodyError {
        parse_body(body.as_bytes(), &JsonLimits::default()).unwrap_err()
    }

    fn syntax(msg: &str) -> BodyErrorKind {
        BodyErrorKind::Syntax(msg.to_owned())
    }

    #[test]
    fn a_valid_object_parses_into_a_value() {
        let v = parse_body(
            br#" {"a":[1,-2,3.5,"x\u00e9",true,null,{"b":{}}]} "#,
            &JsonLimits::default(),
        )
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a":[1,-2,3.5,"x\u{e9}",true,null,{"b":{}}]})
        );
        // Numbers beyond u64 become f64, as serde_json does; range checks catch them later.
        let v = parse_body(
            br#"{"n":123456789012345678901234567890}"#,
            &JsonLimits::default(),
        )
        .unwrap();
        assert!(v["n"].is_f64());
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth_with_the_second_keys_offset() {
        let e = err(r#"{"a":1,"a":2}"#);
        assert_eq!(
            e,
            BodyError {
                kind: BodyErrorKind::DuplicateKey("a".into()),
                offset: 7
            }
        );
        let e = err("{\"x\":{\"b\\\"\":2,\n \"b\\\"\":3}}");
        assert_eq!(e.kind, BodyErrorKind::DuplicateKey("b\"".into()));
        assert_eq!(e.offset, 16);
        // The same key in sibling objects is fine.
        assert!(parse_body(br#"{"m":[{"a":1},{"a":2}]}"#, &JsonLimits::default()).is_ok());
        // Escapes are decoded before comparing: these two keys are the same key.
        let e = err(r#"{"max_tokens":1,"max\u005ftokens":2}"#);
        assert_eq!(e.kind, BodyErrorKind::DuplicateKey("max_tokens".into()));
        assert_eq!(e.offset, 16);
    }

    #[test]
    fn syntax_errors_point_at_the_offending_byte() {
        assert_eq!(
            err(r#"{"a" 1}"#),
            BodyError {
                kind: syntax("expected `:`"),
                offset: 5
            }
        );
        assert_eq!(err(r#"{"a":tru}"#).offset, 8);
        assert_eq!(
            err("{\"a\":\n  @}"),
            BodyError {
                kind: syntax("expected value"),
                offset: 8
            }
        );
        assert_eq!(
            err(r#"{"a":1,}"#),
            BodyError {
                kind: syntax("trailing comma"),
                offset: 7
            }
        );
        assert_eq!(err(r#"{"a":NaN}"#).kind, syntax("expected value"));
        assert_eq!(
            err(r#"{"a":"\ud800"}"#).kind,
            syntax("unexpected end of hex escape")
        );
        assert_eq!(err(r#"{"a":1e999}"#).kind, syntax("number out of range"));
    }

    #[test]
    fn classified_errors_have_their_own_kinds() {
        assert_eq!(
            err("{\"a\":\"x\u{1}\"}"),
            BodyError {
                kind: BodyErrorKind::ControlCharacter,
                offset: 7
            }
        );
        assert_eq!(
            err("{\"a\":1}\n\n  x"),
            BodyError {
                kind: BodyErrorKind::TrailingCharacters,
                offset: 11
            }
        );
        assert_eq!(
            err(r#"{"a":[1,2"#),
            BodyError {
                kind: BodyErrorKind::UnexpectedEof,
                offset: 9
            }
        );
        assert_eq!(
            err(""),
            BodyError {
                kind: BodyErrorKind::UnexpectedEof,
                offset: 0
            }
        );
        assert_eq!(
            err("  \n"),
            BodyError {
                kind: BodyErrorKind::UnexpectedEof,
                offset: 3
            }
        );
        assert_eq!(
            err("  [1]"),
            BodyError {
                kind: BodyErrorKind::NotAnObject,
                offset: 2
            }
        );
        assert_eq!(
            err("\"x\""),
            BodyError {
                kind: BodyErrorKind::NotAnObject,
                offset: 0
            }
        );
        let e = parse_body(b"{\"a\":\"\xff\"}", &JsonLimits::default()).unwrap_err();
        assert_eq!(
            e,
            BodyError {
                kind: BodyErrorKind::InvalidUtf8,
                offset: 6
            }
        );
        // A UTF-8 byte-order mark is not JSON whitespace.
        let e = parse_body(b"\xef\xbb\xbf{}", &JsonLimits::default()).unwrap_err();
        assert_eq!(e.kind, BodyErrorKind::NotAnObject);
    }

    #[test]
    fn depth_is_bounded_and_reported_at_the_opening_bracket() {
        let ok = "{\"a\":".repeat(63) + "[1]" + &"}".repeat(63);
        assert!(parse_body(ok.as_bytes(), &JsonLimits::default()).is_ok());
        let deep = "{\"a\":".repeat(64) + "[1]" + &"}".repeat(64);
        let e = parse_body(deep.as_bytes(), &JsonLimits::default()).unwrap_err();
        assert_eq!(
            e,
            BodyError {
                kind: BodyErrorKind::TooDeep { max_depth: 64 },
                offset: 320
            }
        );
        // serde_json's own recursion limit (127 levels) is reported the same way.
        let deeper = "[".repeat(200) + &"]".repeat(200);
        let body = format!("{{\"a\":{deeper}}}");
        let limits = JsonLimits {
            max_depth: 1000,
            ..JsonLimits::default()
        };
        let e = parse_body(body.as_bytes(), &limits).unwrap_err();
        assert_eq!(e.kind, BodyErrorKind::TooDeep { max_depth: 127 });
    }

    #[test]
    fn long_strings_and_keys_are_refused_at_their_opening_quote() {
        let limits = JsonLimits {
            max_string_bytes: 10,
            ..JsonLimits::default()
        };
        let ok = format!("{{\"a\":\"{}\"}}", "x".repeat(10));
        assert!(parse_body(ok.as_bytes(), &limits).is_ok());
        let long = format!("{{\"a\":\"{}\"}}", "x".repeat(11));
        let e = parse_body(long.as_bytes(), &limits).unwrap_err();
        assert_eq!(
            e,
            BodyError {
                kind: BodyErrorKind::StringTooLong { max_bytes: 10 },
                offset: 5
            }
        );
        let escaped = format!("{{\"a\":\"{}\"}}", "\\n".repeat(11));
        assert_eq!(
            parse_body(escaped.as_bytes(), &limits).unwrap_err().offset,
            5
        );
        let key = format!("{{\"a\":1, \"{}\":2}}", "k".repeat(11));
        assert_eq!(parse_body(key.as_bytes(), &limits).unwrap_err().offset, 8);
    }

    #[test]
    fn limits_deserialize_with_defaults_and_deny_unknown_keys() {
        let l: JsonLimits = serde_json::from_str(r#"{"max_depth":10}"#).unwrap();
        assert_eq!(
            l,
            JsonLimits {
                max_depth: 10,
                ..JsonLimits::default()
            }
        );
        assert!(serde_json::from_str::<JsonLimits>(r#"{"depth":10}"#).is_err());
    }

    #[test]
    fn the_client_message_names_the_problem_and_offset() {
        let m = err(r#"{"a":1,"a":2}"#).client_message();
        assert_eq!(
            m,
            "We could not parse the JSON body of your request: duplicate key 'a' at byte 7."
        );
    }
}
