//! `messages[]`: roles, the keys each role allows, content and its parts, assistant tool
//! calls (CC §2, §2.1, §2.2; vLLM §1).
//!
//! Besides validating, this walk feeds the facts: text bytes for token estimates and the
//! prefix stream for `ChatFacts::prefix_key`.

use serde_json::{Map, Value};

use super::check::{self, VResult};
use super::Cx;
use crate::request::facts::{PrefixHasher, SEP_FIELD, SEP_MESSAGE, SEP_ROLE};
use crate::request::invalid::{self, invalid_type, missing, unknown, Path};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
    /// Any other role string, only with `allow_custom_roles` (vLLM §1).
    Custom,
}

const ROLES: [&str; 6] = [
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

impl Role {
    fn parse(s: &str, allow_custom: bool) -> Option<Role> {
        Some(match s {
            "system" => Role::System,
            "developer" => Role::Developer,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            "function" => Role::Function,
            _ if allow_custom => Role::Custom,
            _ => return None,
        })
    }

    /// OpenAI's content-part types this role takes in array content (CC §2).
    fn parts(self) -> &'static [&'static str] {
        match self {
            Role::System | Role::Developer | Role::Tool => &["text"],
            Role::User => &["text", "image_url", "input_audio", "file"],
            Role::Assistant => &["text", "refusal"],
            Role::Function => &[],
            Role::Custom => &["text", "image_url", "input_audio", "file", "refusal"],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
            Role::Function => "function",
            Role::Custom => "custom",
        }
    }
}

/// At least one message (CC §1 minItems 1) unless `allow_empty_messages`; at most
/// `max_messages`.
pub(super) fn check_messages(v: &Value, p: &Path<'_>, cx: &mut Cx<'_>) -> VResult {
    let items = check::want_array(v, p)?;
    if items.is_empty() && !cx.policy.allow_empty_messages {
        return Err(check::empty_array(p));
    }
    if items.len() > cx.policy.max_messages {
        return Err(check::too_long_array(
            p,
            cx.policy.max_messages,
            items.len(),
        ));
    }
    for (i, m) in items.iter().enumerate() {
        message(m, &p.index(i), cx)?;
    }
    cx.seen.has_messages = true;
    cx.seen.message_count = items.len();
    Ok(())
}

/// What a message said about the keys that decide whether `content` may be absent.
#[derive(Default)]
struct Present {
    content: bool,
    tool_calls: bool,
    function_call: bool,
    tool_call_id: bool,
    name: bool,
}

fn message(m: &Value, p: &Path<'_>, cx: &mut Cx<'_>) -> VResult {
    let obj = check::want_object(m, p)?;
    let rp = p.key("role");
    let rv = check::required(obj, p, "role")?;
    let role_str = check::want_str(rv, &rp)?;
    let Some(role) = Role::parse(role_str, cx.policy.allow_custom_roles) else {
        return Err(invalid::bad_enum(&rp, &ROLES, rv));
    };
    // The role name is rendered (and tokenized) by every template.
    cx.acc.text(role_str);

    let vllm_keys = cx.policy.allow_vllm_message_fields || role == Role::Custom;
    let mut seen = Present::default();
    for (k, val) in obj {
        let kp = p.key(k);
        match (k.as_str(), role) {
            ("role", _) => {}
            ("content", _) => {
                content(val, &kp, role, cx)?;
                seen.content = !val.is_null();
            }
            ("name", r) if r != Role::Tool => {
                cx.acc.text(check::want_str(val, &kp)?);
                seen.name = true;
            }
            ("tool_call_id", Role::Tool | Role::Custom) => {
                cx.acc.text(check::want_str(val, &kp)?);
                seen.tool_call_id = true;
            }
            ("tool_calls", Role::Assistant | Role::Custom) => {
                seen.tool_calls = tool_calls(val, &kp, cx)?;
            }
            ("refusal", Role::Assistant) => {
                if !val.is_null() {
                    cx.acc.text(check::want_str(val, &kp)?);
                }
            }
            // `{id}` of an earlier audio response (CC §2).
            ("audio", Role::Assistant) => {
                if !val.is_null() {
                    let a = check::want_object(val, &kp)?;
                    check::only_keys(a, &kp, &["id"])?;
                    check::want_str(check::required(a, &kp, "id")?, &kp.key("id"))?;
                }
            }
            // Deprecated `{name, arguments}` (CC §2).
            ("function_call", Role::Assistant) => {
                if !val.is_null() {
                    let f = check::want_object(val, &kp)?;
                    check::only_keys(f, &kp, &["name", "arguments"])?;
                    let name = check::want_str(check::required(f, &kp, "name")?, &kp.key("name"))?;
                    let args = check::want_str(
                        check::required(f, &kp, "arguments")?,
                        &kp.key("arguments"),
                    )?;
                    cx.acc.text(name);
                    cx.acc.text(args);
                    seen.function_call = true;
                }
            }
            // vLLM's extra message keys (vLLM §1).
            ("reasoning" | "reasoning_content" | "task", _) if vllm_keys => {
                if !val.is_null() {
                    cx.acc.text(check::want_str(val, &kp)?);
                }
            }
            ("tools", _) if vllm_keys => {
                if !val.is_null() {
                    message_tools(val, &kp, cx)?;
                }
            }
            _ => return Err(unknown(&kp)),
        }
    }

    // Required keys per role (CC §2).
    match role {
        Role::System | Role::Developer | Role::User | Role::Tool => {
            if !obj.contains_key("content") {
                return Err(missing(&p.key("content")));
            }
        }
        // `content` is required but may be null; `name` is required.
        Role::Function => {
            if !obj.contains_key("content") {
                return Err(missing(&p.key("content")));
            }
            if !seen.name {
                return Err(missing(&p.key("name")));
            }
        }
        // Content is required unless tool_calls or function_call is given (CC §2 prose).
        Role::Assistant => {
            if !seen.content && !seen.tool_calls && !seen.function_call {
                return Err(missing(&p.key("content")));
            }
        }
        Role::Custom => {}
    }
    if role == Role::Tool && !seen.tool_call_id {
        return Err(missing(&p.key("tool_call_id")));
    }
    if !cx.acc.prefix.is_full() {
        hash_message(&mut cx.acc.prefix, obj, role_str);
    }
    Ok(())
}

/// A string, or a non-empty array of parts the role allows; `null` only for assistant and
/// function messages (CC §2). An empty string is valid content.
fn content(v: &Value, p: &Path<'_>, role: Role, cx: &mut Cx<'_>) -> VResult {
    match v {
        Value::String(s) => {
            cx.acc.text(s);
            Ok(())
        }
        Value::Null if matches!(role, Role::Assistant | Role::Function | Role::Custom) => Ok(()),
        Value::Array(_) if role == Role::Function => Err(invalid_type(p, "a string or null", v)),
        Value::Array(parts) => {
            if parts.is_empty() {
                return Err(check::empty_array(p));
            }
            for (j, part) in parts.iter().enumerate() {
                content_part(part, &p.index(j), role, parts.len(), cx)?;
            }
            Ok(())
        }
        _ if role == Role::Function => Err(invalid_type(p, "a string or null", v)),
        _ => Err(invalid_type(p, "a string or an array of content parts", v)),
    }
}

/// vLLM's extra part types (vLLM §1), accepted in any role with `allow_vllm_content_parts`.
const VLLM_PARTS: [&str; 8] = [
    "audio_url",
    "video_url",
    "image_embeds",
    "audio_embeds",
    "video_embeds",
    "prompt_embeds",
    "thinking",
    "tool_reference",
];

fn content_part(v: &Value, p: &Path<'_>, role: Role, count: usize, cx: &mut Cx<'_>) -> VResult {
    let obj = check::want_object(v, p)?;
    let tp = p.key("type");
    let Some(tv) = obj.get("type") else {
        if cx.policy.allow_vllm_content_parts {
            return bare_part(obj, p, cx);
        }
        return Err(missing(&tp));
    };
    let ty = check::want_str(tv, &tp)?;
    let vllm_parts = cx.policy.allow_vllm_content_parts;
    let allowed_here = role.parts().contains(&ty) || (vllm_parts && VLLM_PARTS.contains(&ty));
    if !allowed_here {
        let known = ["text", "image_url", "input_audio", "file", "refusal"].contains(&ty)
            || VLLM_PARTS.contains(&ty);
        if known {
            return Err(invalid::invalid_value(
                &tp,
                format!(
                    "a '{}' message does not accept '{ty}' content parts.",
                    role.name()
                ),
            ));
        }
        let mut allowed: Vec<&str> = role.parts().to_vec();
        if vllm_parts {
            allowed.extend(VLLM_PARTS);
        }
        return Err(invalid::bad_enum(&tp, &allowed, tv));
    }
    // vLLM lets media parts carry a caller-chosen cache `uuid`.
    let uuid: &[&str] = if vllm_parts { &["uuid"] } else { &[] };
    match ty {
        "text" => {
            check::only_keys(obj, p, &["type", "text", "prompt_cache_breakpoint"])?;
            let text = check::want_str(check::required(obj, p, "text")?, &p.key("text"))?;
            if let Some(b) = obj.get("prompt_cache_breakpoint") {
                let bp = p.key("prompt_cache_breakpoint");
                let bo = check::want_object(b, &bp)?;
                check::only_keys(bo, &bp, &["mode"])?;
                check::one_of(
                    check::required(bo, &bp, "mode")?,
                    &bp.key("mode"),
                    &["explicit"],
                )?;
            }
            cx.acc.text(text);
        }
        // "one or more text, or exactly one refusal" (CC §2).
        "refusal" => {
            if count > 1 {
                return Err(invalid::invalid_value(
                    &tp,
                    "a 'refusal' part must be the only part of the content.",
                ));
            }
            check::only_keys(obj, p, &["type", "refusal"])?;
            let r = check::want_str(check::required(obj, p, "refusal")?, &p.key("refusal"))?;
            cx.acc.text(r);
        }
        "image_url" => {
            keys_plus(obj, p, &["type", "image_url"], uuid)?;
            let ip = p.key("image_url");
            let img = check::want_object(check::required(obj, p, "image_url")?, &ip)?;
            check::only_keys(img, &ip, &["url", "detail"])?;
            check::want_str(check::required(img, &ip, "url")?, &ip.key("url"))?;
            if let Some(d) = img.get("detail") {
                check::one_of(d, &ip.key("detail"), &["auto", "low", "high"])?;
            }
            media(cx);
        }
        "input_audio" => {
            keys_plus(obj, p, &["type", "input_audio"], uuid)?;
            let ap = p.key("input_audio");
            let a = check::want_object(check::required(obj, p, "input_audio")?, &ap)?;
            check::only_keys(a, &ap, &["data", "format"])?;
            check::want_str(check::required(a, &ap, "data")?, &ap.key("data"))?;
            check::one_of(
                check::required(a, &ap, "format")?,
                &ap.key("format"),
                &["wav", "mp3"],
            )?;
            media(cx);
        }
        // No key inside `file` is required (CC §2.1).
        "file" => {
            check::only_keys(obj, p, &["type", "file"])?;
            let fp = p.key("file");
            let f = check::want_object(check::required(obj, p, "file")?, &fp)?;
            check::only_keys(f, &fp, &["file_id", "file_data", "filename"])?;
            for (k, val) in f {
                check::want_str(val, &fp.key(k))?;
            }
            media(cx);
        }
        _ => vllm_part(ty, obj, p, cx)?,
    }
    Ok(())
}

fn keys_plus(obj: &Map<String, Value>, p: &Path<'_>, base: &[&str], extra: &[&str]) -> VResult {
    for k in obj.keys() {
        if !base.contains(&k.as_str()) && !extra.contains(&k.as_str()) {
            return Err(unknown(&p.key(k)));
        }
    }
    Ok(())
}

/// A non-text part: counted for token estimates (`hash_message` adds its identity to the
/// prefix stream).
fn media(cx: &mut Cx<'_>) {
    cx.acc.non_text_parts += 1;
}

/// Shapes of vLLM's own parts (vLLM §1; vLLM's chat `types.py`).
fn vllm_part(ty: &str, obj: &Map<String, Value>, p: &Path<'_>, cx: &mut Cx<'_>) -> VResult {
    match ty {
        // `{type, audio_url: {url}}`, `{type, video_url: {url}}`.
        "audio_url" | "video_url" => {
            keys_plus(obj, p, &["type", ty], &["uuid"])?;
            let up = p.key(ty);
            let u = check::want_object(check::required(obj, p, ty)?, &up)?;
            check::only_keys(u, &up, &["url"])?;
            check::want_str(check::required(u, &up, "url")?, &up.key("url"))?;
            media(cx);
        }
        // A base64 string or an object of tensors.
        "image_embeds" | "audio_embeds" | "video_embeds" => {
            keys_plus(obj, p, &["type", ty], &["uuid"])?;
            let ep = p.key(ty);
            match obj.get(ty) {
                None | Some(Value::Null | Value::Object(_) | Value::String(_)) => {}
                Some(other) => return Err(invalid_type(&ep, "a string or an object", other)),
            }
            media(cx);
        }
        "prompt_embeds" => {
            check::only_keys(obj, p, &["type", "data"])?;
            check::want_str(check::required(obj, p, "data")?, &p.key("data"))?;
            media(cx);
        }
        "thinking" => {
            check::only_keys(obj, p, &["type", "thinking", "closed"])?;
            let t = check::want_str(check::required(obj, p, "thinking")?, &p.key("thinking"))?;
            if let Some(c) = obj.get("closed") {
                check::want_bool(c, &p.key("closed"))?;
            }
            cx.acc.text(t);
        }
        "tool_reference" => {
            check::only_keys(obj, p, &["type", "name"])?;
            let n = check::want_str(check::required(obj, p, "name")?, &p.key("name"))?;
            cx.acc.text(n);
        }
        _ => {}
    }
    Ok(())
}

/// vLLM's type-less media parts: `{"image_url": "…"}`, `{"audio_url": "…"}`,
/// `{"video_url": "…"}`, each with an optional `uuid` (vLLM §1).
fn bare_part(obj: &Map<String, Value>, p: &Path<'_>, cx: &mut Cx<'_>) -> VResult {
    for ty in ["image_url", "audio_url", "video_url"] {
        if let Some(v) = obj.get(ty) {
            keys_plus(obj, p, &[ty], &["uuid"])?;
            check::want_str(v, &p.key(ty))?;
            media(cx);
            return Ok(());
        }
    }
    Err(missing(&p.key("type")))
}

/// Assistant `tool_calls` (CC §2.2). Returns whether there was at least one call (an empty
/// array does not excuse missing content).
fn tool_calls(v: &Value, p: &Path<'_>, cx: &mut Cx<'_>) -> VResult<bool> {
    if v.is_null() {
        if cx.policy.null_as_unset {
            return Ok(false);
        }
        return Err(invalid_type(p, "an array", v));
    }
    let items = check::want_array(v, p)?;
    for (k, call) in items.iter().enumerate() {
        let cp = p.index(k);
        let obj = check::want_object(call, &cp)?;
        let typ = cp.key("type");
        let tv = check::required(obj, &cp, "type")?;
        let ty = check::want_str(tv, &typ)?;
        let (body_key, fields): (&str, [&str; 2]) = match ty {
            "function" => ("function", ["name", "arguments"]),
            "custom" => ("custom", ["name", "input"]),
            _ => return Err(invalid::bad_enum(&typ, &["function", "custom"], tv)),
        };
        check::only_keys(obj, &cp, &["id", "type", body_key])?;
        let id = check::want_str(check::required(obj, &cp, "id")?, &cp.key("id"))?;
        cx.acc.text(id);
        let bp = cp.key(body_key);
        let body = check::want_object(check::required(obj, &cp, body_key)?, &bp)?;
        check::only_keys(body, &bp, &fields)?;
        // `arguments` is a string holding JSON, which may itself be invalid (CC §2.2).
        for f in fields {
            let s = check::want_str(check::required(body, &bp, f)?, &bp.key(f))?;
            cx.acc.text(s);
        }
    }
    Ok(!items.is_empty())
}

/// vLLM's per-message `tools` (developer-role tools): function tools, counted as prompt
/// text like the top-level ones.
fn message_tools(v: &Value, p: &Path<'_>, cx: &mut Cx<'_>) -> VResult {
    for (i, t) in check::want_array(v, p)?.iter().enumerate() {
        let tp = p.index(i);
        let obj = check::want_object(t, &tp)?;
        check::one_of(
            check::required(obj, &tp, "type")?,
            &tp.key("type"),
            &["function"],
        )?;
        check::only_keys(obj, &tp, &["type", "function"])?;
        let fp = tp.key("function");
        let f = check::want_object(check::required(obj, &tp, "function")?, &fp)?;
        check::want_str(check::required(f, &fp, "name")?, &fp.key("name"))?;
        cx.acc.text_bytes = cx.acc.text_bytes.saturating_add(super::tools::json_len(t));
    }
    Ok(())
}

/// Feed one valid message to the prefix hash in a fixed field order (role, name, content,
/// tool calls), so the key does not depend on the order of keys in the JSON object.
fn hash_message(h: &mut PrefixHasher, obj: &Map<String, Value>, role: &str) {
    h.feed(role.as_bytes());
    h.feed(SEP_ROLE);
    if let Some(Value::String(name)) = obj.get("name") {
        h.feed(name.as_bytes());
        h.feed(SEP_FIELD);
    }
    match obj.get("content") {
        Some(Value::String(s)) => {
            h.feed(s.as_bytes());
            h.feed(SEP_FIELD);
        }
        Some(Value::Array(parts)) => {
            for part in parts {
                hash_part(h, part);
            }
        }
        _ => {}
    }
    if let Some(Value::Array(calls)) = obj.get("tool_calls") {
        for call in calls {
            let body = call.get("function").or_else(|| call.get("custom"));
            for k in ["name", "arguments", "input"] {
                if let Some(Value::String(s)) = body.and_then(|b| b.get(k)) {
                    h.feed(s.as_bytes());
                    h.feed(SEP_FIELD);
                }
            }
        }
    }
    h.feed(SEP_MESSAGE);
}

/// Text parts contribute their text; other parts their type and identity (URL, data or
/// file id), so requests with different images do not share a key.
fn hash_part(h: &mut PrefixHasher, part: &Value) {
    let Some(obj) = part.as_object() else {
        return;
    };
    let ty = obj.get("type").and_then(Value::as_str);
    for k in ["text", "refusal", "thinking"] {
        if let Some(Value::String(s)) = obj.get(k) {
            h.feed(s.as_bytes());
            h.feed(SEP_FIELD);
            return;
        }
    }
    if let Some(ty) = ty {
        h.feed(ty.as_bytes());
    }
    for (k, v) in obj {
        if k == "type" || k == "uuid" {
            continue;
        }
        let ident = match v {
            Value::String(s) => Some(s.as_str()),
            Value::Object(inner) => ["url", "data", "file_id", "file_data"]
                .iter()
                .find_map(|f| inner.get(*f).and_then(Value::as_str)),
            _ => None,
        };
        if let Some(ident) = ident {
            h.feed(ident.as_bytes());
        }
    }
    h.feed(SEP_FIELD);
}
