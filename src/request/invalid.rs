//! `Invalid`: the one error a validation rule produces, and the JSON path that names the
//! field the client has to change.
//!
//! The gateway's error layer renders an `Invalid` as HTTP 400 with
//! `{"error":{"message","type":"invalid_request_error","param","code"}}`
//! (../shared/reference/chat-completions.md §7.1: `code` is a string, never a number).

use std::fmt::Write as _;

use serde_json::Value;

/// The error codes validation uses. They follow the codes OpenAI's API returns for the same
/// kind of mistake, so clients that branch on `code` keep working behind the gateway.
///
/// | code | when |
/// |---|---|
/// | `invalid_type` | wrong JSON type, including `null` where the field is not nullable |
/// | `invalid_value` | a value outside an enum, a pattern mismatch, a broken cross-field rule |
/// | `missing_required_parameter` | a required key is absent |
/// | `unknown_parameter` | an unknown key inside a typed object (a message, a part, a tool …) |
/// | `integer_below_min_value` / `integer_above_max_value` | an integer out of range |
/// | `decimal_below_min_value` / `decimal_above_max_value` | a number out of range |
/// | `empty_string` / `string_above_max_length` | string length rules |
/// | `empty_array` / `array_above_max_length` | array length rules |
/// | `object_above_max_properties` | too many keys (`metadata`) |
/// | `context_length_exceeded` | the prompt leaves no room for output (limits.rs) |
pub mod codes {
    pub const INVALID_TYPE: &str = "invalid_type";
    pub const INVALID_VALUE: &str = "invalid_value";
    pub const MISSING_REQUIRED: &str = "missing_required_parameter";
    pub const UNKNOWN_PARAMETER: &str = "unknown_parameter";
    pub const INTEGER_BELOW_MIN: &str = "integer_below_min_value";
    pub const INTEGER_ABOVE_MAX: &str = "integer_above_max_value";
    pub const DECIMAL_BELOW_MIN: &str = "decimal_below_min_value";
    pub const DECIMAL_ABOVE_MAX: &str = "decimal_above_max_value";
    pub const EMPTY_STRING: &str = "empty_string";
    pub const STRING_ABOVE_MAX_LENGTH: &str = "string_above_max_length";
    pub const EMPTY_ARRAY: &str = "empty_array";
    pub const ARRAY_ABOVE_MAX_LENGTH: &str = "array_above_max_length";
    pub const OBJECT_ABOVE_MAX_PROPERTIES: &str = "object_above_max_properties";
    pub const CONTEXT_LENGTH_EXCEEDED: &str = "context_length_exceeded";
}

/// A request the gateway refuses with 400 before it reaches a worker.
///
/// `param` is the exact JSON path of the first bad field: keys joined with `.`, indices as
/// `[i]` (`messages[2].content[0].type`, `logit_bias.50256`). Keys are written as received,
/// without quoting, like OpenAI does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    pub param: String,
    pub message: String,
    pub code: &'static str,
}

impl Invalid {
    pub fn new(param: impl Into<String>, code: &'static str, message: impl Into<String>) -> Self {
        Invalid {
            param: param.into(),
            message: message.into(),
            code,
        }
    }
}

/// A JSON path under construction: a linked list of segments on the stack, so the success
/// path never allocates; the string is only built when a rule fails.
#[derive(Clone, Copy)]
pub(crate) struct Path<'a> {
    parent: Option<&'a Path<'a>>,
    seg: Seg<'a>,
}

#[derive(Clone, Copy)]
enum Seg<'a> {
    Root,
    Key(&'a str),
    Index(usize),
}

impl Path<'static> {
    pub(crate) const ROOT: Path<'static> = Path {
        parent: None,
        seg: Seg::Root,
    };
}

impl<'a> Path<'a> {
    pub(crate) fn key<'b>(&'b self, key: &'b str) -> Path<'b> {
        Path {
            parent: Some(self),
            seg: Seg::Key(key),
        }
    }

    pub(crate) fn index(&self, index: usize) -> Path<'_> {
        Path {
            parent: Some(self),
            seg: Seg::Index(index),
        }
    }

    pub(crate) fn render(&self) -> String {
        let mut segs: Vec<Seg<'_>> = Vec::new();
        let mut cur: Option<&Path<'_>> = Some(self);
        while let Some(p) = cur {
            segs.push(p.seg);
            cur = p.parent;
        }
        let mut out = String::new();
        for seg in segs.iter().rev() {
            match seg {
                Seg::Root => {}
                Seg::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Seg::Index(i) => {
                    let _ = write!(out, "[{i}]");
                }
            }
        }
        out
    }
}

/// "a string", "an integer", … as used in `invalid_type` messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a decimal",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A short rendering of a client value for messages: never echo a megabyte back.
pub(crate) fn show(v: &Value) -> String {
    const MAX: usize = 64;
    match v {
        Value::String(s) => {
            if s.len() <= MAX {
                format!("'{s}'")
            } else {
                let mut end = MAX;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                format!("'{}…'", &s[..end])
            }
        }
        Value::Array(a) => format!("an array of {} items", a.len()),
        Value::Object(o) => format!("an object with {} keys", o.len()),
        other => other.to_string(),
    }
}

pub(crate) fn invalid_type(path: &Path<'_>, expected: &str, got: &Value) -> Invalid {
    let param = path.render();
    let message = format!(
        "Invalid type for '{param}': expected {expected}, but got {} instead.",
        type_name(got)
    );
    Invalid::new(param, codes::INVALID_TYPE, message)
}

pub(crate) fn missing(path: &Path<'_>) -> Invalid {
    let param = path.render();
    let message = format!("Missing required parameter: '{param}'.");
    Invalid::new(param, codes::MISSING_REQUIRED, message)
}

pub(crate) fn unknown(path: &Path<'_>) -> Invalid {
    let param = path.render();
    let message = format!("Unknown parameter: '{param}'.");
    Invalid::new(param, codes::UNKNOWN_PARAMETER, message)
}

/// `invalid_value` with a message that says what is expected.
pub(crate) fn invalid_value(path: &Path<'_>, detail: impl std::fmt::Display) -> Invalid {
    let param = path.render();
    let message = format!("Invalid value for '{param}': {detail}");
    Invalid::new(param, codes::INVALID_VALUE, message)
}

pub(crate) fn bad_enum(path: &Path<'_>, allowed: &[&str], got: &Value) -> Invalid {
    let list = allowed
        .iter()
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(", ");
    invalid_value(
        path,
        format!("expected one of {list}, but got {} instead.", show(got)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_render_keys_with_dots_and_indices_in_brackets() {
        let root = Path::ROOT;
        let m = root.key("messages");
        let m2 = m.index(2);
        let c = m2.key("content");
        let c0 = c.index(0);
        let t = c0.key("type");
        assert_eq!(t.render(), "messages[2].content[0].type");
        assert_eq!(
            root.key("logit_bias").key("50256").render(),
            "logit_bias.50256"
        );
        assert_eq!(root.key("stop").index(1).render(), "stop[1]");
        assert_eq!(root.render(), "");
    }

    #[test]
    fn show_truncates_long_strings_on_a_char_boundary() {
        let long = "é".repeat(100);
        let shown = show(&Value::String(long));
        assert!(shown.len() < 80, "{shown}");
        assert!(shown.ends_with("…'"));
    }
}
