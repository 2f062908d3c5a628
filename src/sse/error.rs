//! In-band stream errors: the ones a worker sends, and the one the gateway sends.
//!
//! Once a 200 and the first bytes are on the wire, a failure can only be reported inside the
//! stream: `data: {"error":{…}}` followed by `data: [DONE]` (chat-completions.md §4; vLLM does the
//! same, vllm.md §5). The openai Python client raises `APIError` with `error.message` on it.

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

/// An in-band `{"error": …}` event seen in the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InBandError {
    pub message: String,
    /// `error.type`: an OpenAI type (`invalid_request_error`…) or a vLLM class name
    /// (`BadRequestError`, `InternalServerError`…, vllm.md §6).
    pub error_type: Option<String>,
    /// `error.code`: OpenAI sends a string, vLLM the HTTP status as an integer (vllm.md §6);
    /// both are kept as text.
    pub code: Option<String>,
}

/// The openai client's text when an error carries no message (chat-completions.md §4).
const DEFAULT_MESSAGE: &str = "An error occurred during streaming";

impl InBandError {
    /// From the value of the `error` key. `None` for the values the openai client treats as
    /// no error at all (`null`, `false`, `0`, `""`, `{}`, `[]`: Python falsiness).
    pub(super) fn from_json(value: &Value) -> Option<Self> {
        match value {
            Value::Object(obj) if !obj.is_empty() => Some(Self {
                // The client falls back to its default text unless `message` is a non-empty string.
                message: match obj.get("message") {
                    Some(Value::String(s)) if !s.is_empty() => s.clone(),
                    _ => DEFAULT_MESSAGE.to_string(),
                },
                error_type: obj.get("type").and_then(scalar_text),
                code: obj.get("code").and_then(scalar_text),
            }),
            // `{"error":"Unauthorized"}` is vLLM's 401 body (vllm.md §1); same idea in a stream.
            Value::String(s) if !s.is_empty() => Some(Self {
                message: s.clone(),
                error_type: None,
                code: None,
            }),
            Value::Bool(true) => Some(Self {
                message: DEFAULT_MESSAGE.to_string(),
                error_type: None,
                code: None,
            }),
            Value::Number(n) if n.as_f64() != Some(0.0) => Some(Self {
                message: DEFAULT_MESSAGE.to_string(),
                error_type: None,
                code: None,
            }),
            Value::Array(a) if !a.is_empty() => Some(Self {
                message: DEFAULT_MESSAGE.to_string(),
                error_type: None,
                code: None,
            }),
            _ => None,
        }
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorBody<'a>,
}

/// OpenAI's error body: all four keys present, `param` and `code` nullable, `code` a string
/// (chat-completions.md §7.1).
#[derive(Serialize)]
struct ErrorBody<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    err_type: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

/// The bytes the gateway sends when a stream fails midway: an OpenAI-shaped error event and the
/// `[DONE]` terminator, `data: {"error":{"message":…,"type":…,"param":null,"code":…}}\n\ndata: [DONE]\n\n`.
/// serde_json escapes quotes, backslashes and control characters (so a newline in `message`
/// cannot break the `data:` line).
pub fn in_band_error_event(message: &str, err_type: &str, code: Option<&str>) -> Bytes {
    let envelope = ErrorEnvelope {
        error: ErrorBody {
            message,
            err_type,
            param: None,
            code,
        },
    };
    let mut out = Vec::with_capacity(96 + message.len() + err_type.len());
    out.extend_from_slice(b"data: ");
    if serde_json::to_writer(&mut out, &envelope).is_err() {
        // Serializing borrowed strings into a Vec cannot fail; keep the stream well-formed anyway.
        out.truncate(6);
        out.extend_from_slice(
            br#"{"error":{"message":"An error occurred during streaming","type":"server_error","param":null,"code":null}}"#,
        );
    }
    out.extend_from_slice(b"\n\ndata: [DONE]\n\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_event_shape_and_escaping() {
        let ev = in_band_error_event("bad \"thing\"\nline2 \\ é \u{1}", "server_error", Some("x"));
        let text = std::str::from_utf8(&ev).unwrap();
        let (first, rest) = text.split_once("\n\n").unwrap();
        assert_eq!(rest, "data: [DONE]\n\n");
        let json = first.strip_prefix("data: ").unwrap();
        assert!(!json.contains(['\n', '\r']));
        let v: Value = serde_json::from_str(json).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"message": "bad \"thing\"\nline2 \\ é \u{1}", "type": "server_error", "param": null, "code": "x"}})
        );
        let v: Value = serde_json::from_slice(
            in_band_error_event("m", "t", None)
                .strip_prefix(b"data: ")
                .and_then(|b| b.split(|&c| c == b'\n').next())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(v["error"]["code"], Value::Null);
        assert_eq!(v["error"]["param"], Value::Null);
    }

    #[test]
    fn falsy_errors_are_not_errors() {
        for v in [
            serde_json::json!(null),
            serde_json::json!(false),
            serde_json::json!(0),
            serde_json::json!(""),
            serde_json::json!({}),
            serde_json::json!([]),
        ] {
            assert_eq!(InBandError::from_json(&v), None, "{v}");
        }
        let e = InBandError::from_json(&serde_json::json!({"message": null, "code": 503}));
        assert_eq!(
            e,
            Some(InBandError {
                message: DEFAULT_MESSAGE.into(),
                error_type: None,
                code: Some("503".into())
            })
        );
    }
}
