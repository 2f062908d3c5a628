//! Structured option objects: `stream_options`, `response_format`, `structured_outputs`,
//! `metadata`, audio output, `prediction`, OpenAI-hosted options, and vLLM's object-valued
//! extras.

use serde_json::Value;

use super::check::{self, VResult};
use super::{Cx, Seen, I64_MAX};
use crate::request::invalid::{self, codes, invalid_type, Invalid, Path};

/// `{include_usage?, include_obfuscation?}` (CC §1) plus vLLM's `continuous_usage_stats`
/// (vLLM §5); each a boolean or null. The "only with stream" rule is cross-field.
pub(super) fn stream_options(v: &Value, p: &Path<'_>, cx: &mut Cx<'_>) -> VResult {
    if v.is_null() {
        return Ok(());
    }
    let obj = check::want_object(v, p)?;
    check::only_keys(
        obj,
        p,
        &[
            "include_usage",
            "include_obfuscation",
            "continuous_usage_stats",
        ],
    )?;
    for (k, val) in obj {
        if !val.is_null() {
            let b = check::want_bool(val, &p.key(k))?;
            if k == "include_usage" {
                cx.seen.include_usage = Some(b);
            }
        }
    }
    cx.seen.stream_options = true;
    Ok(())
}

/// One of `{type:"text"}`, `{type:"json_object"}`, `{type:"json_schema", json_schema}`
/// (CC §1.1); vLLM's `structural_tag` only with `allow_structural_tag` (vLLM §2).
pub(super) fn response_format<'a>(v: &'a Value, p: &Path<'_>, cx: &mut Cx<'a>) -> VResult {
    if v.is_null() {
        if cx.policy.null_as_unset {
            return Ok(());
        }
        return Err(invalid_type(p, "an object", v));
    }
    let obj = check::want_object(v, p)?;
    let tp = p.key("type");
    let tv = check::required(obj, p, "type")?;
    let ty = check::want_str(tv, &tp)?;
    match ty {
        "text" | "json_object" => check::only_keys(obj, p, &["type"])?,
        "json_schema" => {
            check::only_keys(obj, p, &["type", "json_schema"])?;
            json_schema(
                check::required(obj, p, "json_schema")?,
                &p.key("json_schema"),
            )?;
        }
        // vLLM validates the tag's content itself (xgrammar); only the envelope is ours.
        "structural_tag" if cx.policy.allow_structural_tag => {}
        _ => {
            let allowed: &[&str] = if cx.policy.allow_structural_tag {
                &["text", "json_object", "json_schema", "structural_tag"]
            } else {
                &["text", "json_object", "json_schema"]
            };
            return Err(invalid::bad_enum(&tp, allowed, tv));
        }
    }
    cx.seen.response_format_type = Some(ty);
    Ok(())
}

/// `{name (req, ^[a-zA-Z0-9_-]{1,64}$), description?, schema?: object, strict?: bool|null}`
/// (CC §1.1).
fn json_schema(v: &Value, p: &Path<'_>) -> VResult {
    let obj = check::want_object(v, p)?;
    check::only_keys(obj, p, &["name", "description", "schema", "strict"])?;
    let np = p.key("name");
    let name = check::want_str(check::required(obj, p, "name")?, &np)?;
    if !check::is_function_name(name) {
        return Err(invalid::invalid_value(
            &np,
            "must be 1 to 64 characters of a-z, A-Z, 0-9, '_' or '-'.",
        ));
    }
    if let Some(d) = obj.get("description") {
        check::want_str(d, &p.key("description"))?;
    }
    if let Some(s) = obj.get("schema") {
        check::want_object(s, &p.key("schema"))?;
    }
    if let Some(s) = check::opt(obj, "strict") {
        check::want_bool(s, &p.key("strict"))?;
    }
    Ok(())
}

/// `{ttl?: "30m", mode?: "implicit"|"explicit"}` (CC §1).
pub(super) fn prompt_cache_options(v: &Value, p: &Path<'_>) -> VResult {
    let obj = check::want_object(v, p)?;
    check::only_keys(obj, p, &["ttl", "mode"])?;
    if let Some(t) = obj.get("ttl") {
        check::one_of(t, &p.key("ttl"), &["30m"])?;
    }
    if let Some(m) = obj.get("mode") {
        check::one_of(m, &p.key("mode"), &["implicit", "explicit"])?;
    }
    Ok(())
}

/// At most 16 pairs; keys ≤ 64 characters; values strings ≤ 512 characters (CC §1).
pub(super) fn metadata(v: &Value, p: &Path<'_>) -> VResult {
    let obj = check::want_object(v, p)?;
    if obj.len() > 16 {
        let param = p.render();
        let message = format!(
            "Invalid '{param}': too many properties. Expected an object with at most 16 properties, but got {} properties instead.",
            obj.len()
        );
        return Err(Invalid::new(
            param,
            codes::OBJECT_ABOVE_MAX_PROPERTIES,
            message,
        ));
    }
    for (k, val) in obj {
        let kp = p.key(k);
        let chars = k.chars().count();
        if chars > 64 {
            return Err(check::too_long_string(&kp, 64, chars));
        }
        check::str_max_chars(val, &kp, 512)?;
    }
    Ok(())
}

/// Items `"text"` | `"audio"` (CC §1). Asking for audio requires `audio` (cross-field).
pub(super) fn modalities(v: &Value, p: &Path<'_>, cx: &mut Cx<'_>) -> VResult {
    if v.is_null() {
        return Ok(());
    }
    let items = check::want_array(v, p)?;
    for (i, m) in items.iter().enumerate() {
        if check::one_of(m, &p.index(i), &["text", "audio"])? == "audio" {
            cx.seen.wants_audio = true;
        }
    }
    Ok(())
}

/// `{voice (req): string | {id}, format (req): wav|aac|mp3|flac|opus|pcm16}` (CC §1).
pub(super) fn audio(v: &Value, p: &Path<'_>, cx: &mut Cx<'_>) -> VResult {
    if v.is_null() {
        return Ok(());
    }
    let obj = check::want_object(v, p)?;
    check::only_keys(obj, p, &["voice", "format"])?;
    let vp = p.key("voice");
    match check::required(obj, p, "voice")? {
        Value::String(_) => {}
        Value::Object(voice) => {
            check::only_keys(voice, &vp, &["id"])?;
            check::want_str(check::required(voice, &vp, "id")?, &vp.key("id"))?;
        }
        other => return Err(invalid_type(&vp, "a string or an object", other)),
    }
    check::one_of(
        check::required(obj, p, "format")?,
        &p.key("format"),
        &["wav", "aac", "mp3", "flac", "opus", "pcm16"],
    )?;
    cx.seen.has_audio = true;
    Ok(())
}

/// `{type: "content", content: string | array(≥1) of text parts}` (CC §1).
pub(super) fn prediction(v: &Value, p: &Path<'_>) -> VResult {
    let obj = check::want_object(v, p)?;
    check::one_of(
        check::required(obj, p, "type")?,
        &p.key("type"),
        &["content"],
    )?;
    check::only_keys(obj, p, &["type", "content"])?;
    let cp = p.key("content");
    match check::required(obj, p, "content")? {
        Value::String(_) => Ok(()),
        Value::Array(parts) => {
            if parts.is_empty() {
                return Err(check::empty_array(&cp));
            }
            for (i, part) in parts.iter().enumerate() {
                text_part(part, &cp.index(i))?;
            }
            Ok(())
        }
        other => Err(invalid_type(
            &cp,
            "a string or an array of text parts",
            other,
        )),
    }
}

/// `{type: "text", text: string}`.
fn text_part(v: &Value, p: &Path<'_>) -> VResult {
    let obj = check::want_object(v, p)?;
    check::one_of(check::required(obj, p, "type")?, &p.key("type"), &["text"])?;
    check::only_keys(obj, p, &["type", "text"])?;
    check::want_str(check::required(obj, p, "text")?, &p.key("text"))?;
    Ok(())
}

/// `{user_location?: {type: "approximate", approximate: {city?, country?, region?,
/// timezone?}} | null, search_context_size?: low|medium|high}` (CC §1).
pub(super) fn web_search_options(v: &Value, p: &Path<'_>) -> VResult {
    let obj = check::want_object(v, p)?;
    check::only_keys(obj, p, &["user_location", "search_context_size"])?;
    if let Some(loc) = check::opt(obj, "user_location") {
        let lp = p.key("user_location");
        let lobj = check::want_object(loc, &lp)?;
        check::one_of(
            check::required(lobj, &lp, "type")?,
            &lp.key("type"),
            &["approximate"],
        )?;
        check::only_keys(lobj, &lp, &["type", "approximate"])?;
        let ap = lp.key("approximate");
        let approx = check::want_object(check::required(lobj, &lp, "approximate")?, &ap)?;
        check::only_keys(approx, &ap, &["city", "country", "region", "timezone"])?;
        for (k, val) in approx {
            if !val.is_null() {
                check::want_str(val, &ap.key(k))?;
            }
        }
    }
    if let Some(s) = obj.get("search_context_size") {
        check::one_of(s, &p.key("search_context_size"), &["low", "medium", "high"])?;
    }
    Ok(())
}

/// `{model (req): string, policy?}` (CC §1; `policy` is not described further).
pub(super) fn moderation(v: &Value, p: &Path<'_>) -> VResult {
    let obj = check::want_object(v, p)?;
    check::only_keys(obj, p, &["model", "policy"])?;
    check::want_str(check::required(obj, p, "model")?, &p.key("model"))?;
    Ok(())
}

/// The constraint keys of `structured_outputs`, of which exactly one must be set
/// (vLLM §4), with the JSON type each takes.
const SO_CONSTRAINTS: [&str; 6] = [
    "json",
    "regex",
    "choice",
    "grammar",
    "json_object",
    "structural_tag",
];

/// `structured_outputs`: exactly one constraint, plus the options (vLLM §4).
pub(super) fn structured_outputs<'a>(v: &'a Value, p: &Path<'_>, cx: &mut Cx<'a>) -> VResult {
    if v.is_null() {
        return Ok(());
    }
    let obj = check::want_object(v, p)?;
    let mut set: Option<&str> = None;
    for (k, val) in obj {
        let kp = p.key(k);
        match k.as_str() {
            "json" => match val {
                Value::Null | Value::String(_) | Value::Object(_) => {}
                other => return Err(invalid_type(&kp, "a string or an object", other)),
            },
            "regex" | "grammar" | "structural_tag" | "whitespace_pattern" => {
                if !val.is_null() {
                    check::want_str(val, &kp)?;
                }
            }
            "choice" => {
                if !val.is_null() {
                    for (i, c) in check::want_array(val, &kp)?.iter().enumerate() {
                        check::want_str(c, &kp.index(i))?;
                    }
                }
            }
            "json_object" => {
                if !val.is_null() {
                    check::want_bool(val, &kp)?;
                }
            }
            // Plain `bool` fields in vLLM: null is refused there too.
            "disable_any_whitespace" | "disable_additional_properties" => {
                check::want_bool(val, &kp)?;
            }
            _ => return Err(invalid::unknown(&kp)),
        }
        if SO_CONSTRAINTS.contains(&k.as_str()) && !val.is_null() {
            if set.is_some() {
                return Err(invalid::invalid_value(
                    &kp,
                    format!(
                        "only one kind of structured outputs constraint may be set; '{}' is already set.",
                        set.unwrap_or_default()
                    ),
                ));
            }
            set = Some(k.as_str());
        }
    }
    if set.is_none() {
        return Err(invalid::invalid_value(
            p,
            "exactly one of 'json', 'regex', 'choice', 'grammar', 'json_object' or 'structural_tag' must be set.",
        ));
    }
    cx.seen.structured_outputs = Some(obj);
    Ok(())
}

/// Cross-field rules of `structured_outputs` (vLLM §4). Param `structured_outputs` in both:
/// it is the vLLM-only field, the one a portable client can drop.
pub(super) fn structured_outputs_cross(s: &Seen<'_>, root: &Path<'_>) -> VResult {
    let Some(so) = s.structured_outputs else {
        return Ok(());
    };
    let p = root.key("structured_outputs");
    // Not with a named tool_choice (vLLM §4; vLLM counts json/regex/choice here).
    let named_tool = s.tool_choice.is_some_and(Value::is_object);
    let constrains = ["json", "regex", "choice"]
        .iter()
        .any(|k| check::opt(so, k).is_some());
    if named_tool && constrains {
        return Err(invalid::invalid_value(
            &p,
            "structured outputs cannot be combined with a named 'tool_choice'.",
        ));
    }
    // vLLM folds `response_format` into `structured_outputs` (json_object -> json_object,
    // json_schema -> json, structural_tag -> structural_tag); a different constraint
    // already set here then makes two, which vLLM refuses.
    let folded = match s.response_format_type {
        Some("json_object") => Some("json_object"),
        Some("json_schema") => Some("json"),
        Some("structural_tag") => Some("structural_tag"),
        _ => None,
    };
    if let Some(f) = folded {
        let clash = SO_CONSTRAINTS
            .iter()
            .any(|k| *k != f && check::opt(so, k).is_some());
        if clash {
            return Err(invalid::invalid_value(
                &p,
                "'response_format' and 'structured_outputs' set different constraints.",
            ));
        }
    }
    Ok(())
}

/// `documents`: objects with string values (vLLM §4). The template renders them, so they
/// count as prompt text.
pub(super) fn documents(v: &Value, p: &Path<'_>, cx: &mut Cx<'_>) -> VResult {
    for (i, d) in check::want_array(v, p)?.iter().enumerate() {
        let dp = p.index(i);
        for (k, val) in check::want_object(d, &dp)? {
            let s = check::want_str(val, &dp.key(k))?;
            cx.acc.text_bytes = cx.acc.text_bytes.saturating_add(k.len() + s.len());
        }
    }
    Ok(())
}

/// An object whose values are objects (`media_io_kwargs`, vLLM §4).
pub(super) fn object_of_objects(v: &Value, p: &Path<'_>) -> VResult {
    for (k, val) in check::want_object(v, p)? {
        check::want_object(val, &p.key(k))?;
    }
    Ok(())
}

/// Non-empty, ≤ 128 characters, none of `@ / \ NUL` (vLLM §4, 0.33).
pub(super) fn cache_salt(v: &Value, p: &Path<'_>) -> VResult {
    let s = check::non_empty_str(v, p)?;
    check::str_max_chars(v, p, 128)?;
    if s.contains(['@', '/', '\\', '\0']) {
        return Err(invalid::invalid_value(
            p,
            "must not contain '@', '/', '\\' or NUL.",
        ));
    }
    Ok(())
}

/// Values: strings, numbers, or lists of them (vLLM §4).
pub(super) fn vllm_xargs(v: &Value, p: &Path<'_>) -> VResult {
    for (k, val) in check::want_object(v, p)? {
        let kp = p.key(k);
        match val {
            Value::String(_) | Value::Number(_) => {}
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if !(item.is_string() || item.is_number()) {
                        return Err(invalid_type(&kp.index(i), "a string or a number", item));
                    }
                }
            }
            other => {
                return Err(invalid_type(
                    &kp,
                    "a string, a number or an array of them",
                    other,
                ))
            }
        }
    }
    Ok(())
}

/// `{max_pattern_size, min_pattern_size, min_count}`, integers ≥ 0 (default 0);
/// min ≤ max; with max > 0, min_count ≥ 2 (vLLM §4, 0.33).
pub(super) fn repetition_detection(v: &Value, p: &Path<'_>) -> VResult {
    let obj = check::want_object(v, p)?;
    check::only_keys(
        obj,
        p,
        &["max_pattern_size", "min_pattern_size", "min_count"],
    )?;
    let get = |k: &str| -> VResult<i128> {
        match obj.get(k) {
            None => Ok(0),
            Some(val) => check::int_in(val, &p.key(k), 0, I64_MAX),
        }
    };
    let max = get("max_pattern_size")?;
    let min = get("min_pattern_size")?;
    let count = get("min_count")?;
    if min > max {
        return Err(invalid::invalid_value(
            &p.key("min_pattern_size"),
            format!("must be <= max_pattern_size ({max}), got {min}."),
        ));
    }
    if max > 0 && count < 2 {
        return Err(invalid::invalid_value(
            &p.key("min_count"),
            format!("must be >= 2 when max_pattern_size is above 0, got {count}."),
        ));
    }
    Ok(())
}
