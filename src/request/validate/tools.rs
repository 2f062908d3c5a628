//! `tools`, `tool_choice` and their deprecated forms `functions`, `function_call`
//! (CC §1.2, §1.3; vLLM §2).

use serde_json::{Map, Value};

use super::check::{self, VResult};
use super::{Cx, Seen};
use crate::request::invalid::{self, invalid_type, Path};
use crate::request::ValidationPolicy;

/// `tools`: a non-empty array of function tools.
///
/// - `tools: []` is refused (vLLM §2, 0.33; OpenAI refuses it as well).
/// - Custom tools (`type: "custom"`, CC §1.2) are refused: vLLM accepts only functions.
/// - Names follow `^[a-zA-Z0-9_-]{1,64}$` (CC §1.2) unless `allow_any_tool_name`.
pub(super) fn tools<'a>(v: &'a Value, p: &Path<'_>, cx: &mut Cx<'a>) -> VResult {
    if v.is_null() {
        if cx.policy.null_as_unset {
            return Ok(());
        }
        return Err(invalid_type(p, "an array", v));
    }
    let items = check::want_array(v, p)?;
    if items.is_empty() {
        return Err(check::empty_array(p));
    }
    for (i, tool) in items.iter().enumerate() {
        let tp = p.index(i);
        let obj = check::want_object(tool, &tp)?;
        let typ = tp.key("type");
        let tv = check::required(obj, &tp, "type")?;
        match check::want_str(tv, &typ)? {
            "function" => {}
            "custom" => {
                return Err(invalid::invalid_value(
                    &typ,
                    "only 'function' tools are supported by this deployment (vLLM accepts no custom tools).",
                ))
            }
            _ => return Err(invalid::bad_enum(&typ, &["function"], tv)),
        }
        check::only_keys(obj, &tp, &["type", "function"])?;
        let fp = tp.key("function");
        let f = check::want_object(check::required(obj, &tp, "function")?, &fp)?;
        function_definition(f, &fp, cx.policy, &mut cx.acc.text_bytes)?;
    }
    cx.seen.tools = Some(items);
    Ok(())
}

/// `{name (req), description?, parameters?: object, strict?: bool|null}` (CC §1.2). The
/// template renders the definition into the prompt, so it counts as prompt text.
fn function_definition(
    f: &Map<String, Value>,
    p: &Path<'_>,
    policy: &ValidationPolicy,
    text_bytes: &mut usize,
) -> VResult {
    check::only_keys(f, p, &["name", "description", "parameters", "strict"])?;
    let name = function_name(check::required(f, p, "name")?, &p.key("name"), policy)?;
    let mut bytes = name.len();
    if let Some(d) = f.get("description") {
        bytes += check::want_str(d, &p.key("description"))?.len();
    }
    if let Some(params) = f.get("parameters") {
        check::want_object(params, &p.key("parameters"))?;
        bytes += json_len(params);
    }
    if let Some(s) = check::opt(f, "strict") {
        check::want_bool(s, &p.key("strict"))?;
    }
    *text_bytes = text_bytes.saturating_add(bytes);
    Ok(())
}

fn function_name<'v>(v: &'v Value, p: &Path<'_>, policy: &ValidationPolicy) -> VResult<&'v str> {
    let name = check::want_str(v, p)?;
    if policy.allow_any_tool_name {
        if name.is_empty() {
            return Err(check::empty_string(p));
        }
    } else if !check::is_function_name(name) {
        return Err(invalid::invalid_value(
            p,
            "must be 1 to 64 characters of a-z, A-Z, 0-9, '_' or '-'.",
        ));
    }
    Ok(name)
}

/// `"none"`, `"auto"`, `"required"`, or `{type: "function", function: {name}}`.
/// `allowed_tools` and `custom` (CC §1.3) are refused: vLLM does not support them (vLLM §2).
pub(super) fn tool_choice<'a>(v: &'a Value, p: &Path<'_>, cx: &mut Cx<'a>) -> VResult {
    match v {
        Value::Null => {
            if cx.policy.null_as_unset {
                return Ok(());
            }
            return Err(invalid_type(p, "a string or an object", v));
        }
        Value::String(_) => {
            check::one_of(v, p, &["none", "auto", "required"])?;
        }
        Value::Object(obj) => {
            let typ = p.key("type");
            let tv = check::required(obj, p, "type")?;
            match check::want_str(tv, &typ)? {
                "function" => {}
                "allowed_tools" | "custom" => {
                    return Err(invalid::invalid_value(
                        &typ,
                        "only named function tools, 'none', 'auto' or 'required' are supported by this deployment.",
                    ))
                }
                _ => return Err(invalid::bad_enum(&typ, &["function"], tv)),
            }
            check::only_keys(obj, p, &["type", "function"])?;
            let fp = p.key("function");
            let f = check::want_object(check::required(obj, p, "function")?, &fp)?;
            check::only_keys(f, &fp, &["name"])?;
            check::non_empty_str(check::required(f, &fp, "name")?, &fp.key("name"))?;
        }
        other => return Err(invalid_type(p, "a string or an object", other)),
    }
    cx.seen.tool_choice = Some(v);
    Ok(())
}

/// `tool_choice` against `tools` (vLLM §2 `check_tool_usage`).
pub(super) fn cross_check(s: &Seen<'_>, root: &Path<'_>) -> VResult {
    let Some(choice) = s.tool_choice else {
        return Ok(());
    };
    if choice.as_str() == Some("none") {
        return Ok(());
    }
    let p = root.key("tool_choice");
    // Param `tool_choice`: the choice refers to tools that are not there.
    let Some(tools) = s.tools else {
        return Err(invalid::invalid_value(
            &p,
            "'tool_choice' is only allowed when 'tools' are specified.",
        ));
    };
    if let Some(name) = choice
        .get("function")
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str)
    {
        let known = tools.iter().any(|t| {
            t.get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                == Some(name)
        });
        if !known {
            let fp = p.key("function");
            return Err(invalid::invalid_value(
                &fp.key("name"),
                format!("no function named '{name}' in 'tools'."),
            ));
        }
    }
    Ok(())
}

/// Deprecated `functions`: 1..=128 items of `{name (req), description?, parameters?}`
/// (CC §1). vLLM ignores the field (vLLM §2), so it adds no prompt text.
pub(super) fn functions(v: &Value, p: &Path<'_>, policy: &ValidationPolicy) -> VResult {
    let items = check::array_len(v, p, 1, 128)?;
    for (i, f) in items.iter().enumerate() {
        let fp = p.index(i);
        let obj = check::want_object(f, &fp)?;
        check::only_keys(obj, &fp, &["name", "description", "parameters"])?;
        function_name(check::required(obj, &fp, "name")?, &fp.key("name"), policy)?;
        if let Some(d) = obj.get("description") {
            check::want_str(d, &fp.key("description"))?;
        }
        if let Some(params) = obj.get("parameters") {
            check::want_object(params, &fp.key("parameters"))?;
        }
    }
    Ok(())
}

/// Deprecated `function_call`: `"none"`, `"auto"` or `{name}` (CC §1.3).
pub(super) fn function_call(v: &Value, p: &Path<'_>) -> VResult {
    match v {
        Value::String(_) => check::one_of(v, p, &["none", "auto"]).map(drop),
        Value::Object(obj) => {
            check::only_keys(obj, p, &["name"])?;
            check::want_str(check::required(obj, p, "name")?, &p.key("name"))?;
            Ok(())
        }
        other => Err(invalid_type(p, "a string or an object", other)),
    }
}

/// Length of `v` as a chat template renders it with `tojson` (`", "` and `": "` separators,
/// escapes counted), so `prompt_text_bytes` stays an upper bound for tool schemas.
pub(crate) fn json_len(v: &Value) -> usize {
    match v {
        Value::Null => 4,
        Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::Number(n) => number_len(n),
        Value::String(s) => string_json_len(s),
        Value::Array(items) => {
            2 + items.iter().map(json_len).sum::<usize>() + 2 * items.len().saturating_sub(1)
        }
        Value::Object(obj) => {
            2 + obj
                .iter()
                .map(|(k, v)| string_json_len(k) + 2 + json_len(v))
                .sum::<usize>()
                + 2 * obj.len().saturating_sub(1)
        }
    }
}

/// Digits (and sign) of an integer; 24 for a float, the longest shortest-round-trip form
/// of an f64: a bound is all the estimate needs, without formatting anything.
fn number_len(n: &serde_json::Number) -> usize {
    let digits = |mut u: u64| {
        let mut d = 1;
        while u >= 10 {
            u /= 10;
            d += 1;
        }
        d
    };
    if let Some(u) = n.as_u64() {
        digits(u)
    } else if let Some(i) = n.as_i64() {
        1 + digits(i.unsigned_abs())
    } else {
        24
    }
}

/// Extra bytes JSON escaping adds to each byte: 1 for the two-character escapes, 5 for
/// other control characters (`\uXXXX`), 0 otherwise.
const ESCAPE_EXTRA: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = 5;
        b += 1;
    }
    t[b'"' as usize] = 1;
    t[b'\\' as usize] = 1;
    t[b'\n' as usize] = 1;
    t[b'\r' as usize] = 1;
    t[b'\t' as usize] = 1;
    t[0x08] = 1;
    t[0x0c] = 1;
    t
};

fn string_json_len(s: &str) -> usize {
    let extra: usize = s
        .bytes()
        .map(|b| usize::from(ESCAPE_EXTRA[usize::from(b)]))
        .sum();
    2 + s.len() + extra
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_len_matches_python_style_separators() {
        let v = json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a", "b"]});
        // json.dumps(v, sort_keys=True) with ", " and ": " separators:
        let rendered = r#"{"properties": {"a": {"type": "string"}}, "required": ["a", "b"], "type": "object"}"#;
        assert_eq!(json_len(&v), rendered.len());
        assert_eq!(json_len(&json!("a\"b\n\u{1}")), r#""a\"b\n\u0001""#.len());
        assert_eq!(
            json_len(&json!([0, 7, -12, 123456789])),
            "[0, 7, -12, 123456789]".len()
        );
        assert_eq!(json_len(&json!(i64::MIN)), i64::MIN.to_string().len());
        assert_eq!(json_len(&json!(u64::MAX)), u64::MAX.to_string().len());
        assert!(json_len(&json!(0.1)) >= "0.1".len());
    }
}
