//! The request path of `admission::chat` on arbitrary bytes: parse, validate,
//! decide the output limit, rewrite. Nothing may panic, and what each step
//! promises the next must hold:
//! - `parse_body` accepts exactly what serde_json accepts, minus our own
//!   refusals (duplicate keys, depth, string length, non-objects), and builds
//!   the same value; its error offsets lie inside the body;
//! - a body that passed `parse_body` can always be rewritten (a `SpliceError`
//!   there is a 500 in the gateway), for chat and for the `/v1/completions`
//!   path that only parses;
//! - the rewritten body parses again and says exactly what the plan said:
//!   the limit field set, the other one gone, `stream_options.include_usage`
//!   true when asked, every other member unchanged.
//!
//! Input layout: two knob bytes (policy switches and sizes), then the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use vllm_gateway::request::{
    parse_body, resolve_limit, rewrite_body, tokens, validate_chat, BodyErrorKind, JsonLimits,
    LimitField, LimitPolicy, OnExceed, RewritePlan, ValidationPolicy,
};

fuzz_target!(|data: &[u8]| {
    let [k0, k1, body @ ..] = data else {
        return;
    };
    let (k0, k1) = (*k0, *k1);
    let limits = JsonLimits {
        max_depth: 2 + usize::from(k1 % 140),
        max_string_bytes: if k0 & 0x40 != 0 {
            16 + usize::from(k1) * 64
        } else {
            JsonLimits::default().max_string_bytes
        },
    };

    let parsed = parse_body(body, &limits);
    let reference = serde_json::from_slice::<Value>(body);
    let value = match parsed {
        Ok(v) => {
            let r = reference.expect("parse_body accepted what serde_json refuses");
            assert_eq!(v, r, "parse_body and serde_json disagree on the value");
            assert!(v.is_object());
            v
        }
        Err(e) => {
            assert!(e.offset <= body.len(), "offset {} past the body", e.offset);
            let ours = matches!(
                e.kind,
                BodyErrorKind::DuplicateKey(_)
                    | BodyErrorKind::TooDeep { .. }
                    | BodyErrorKind::StringTooLong { .. }
                    | BodyErrorKind::NotAnObject
            );
            if !ours {
                assert!(
                    reference.is_err(),
                    "parse_body refused ({}) what serde_json accepts",
                    e
                );
            }
            // The client's message must render (it goes into the 400).
            let _ = e.client_message();
            return;
        }
    };

    // The /v1/completions path: parsed, not validated, usage asked for.
    let usage_only = RewritePlan {
        limit: None,
        include_usage: true,
    };
    check_rewrite(body, &value, &usage_only, &limits);

    let policy = ValidationPolicy {
        allow_custom_roles: k0 & 0x01 != 0,
        allow_vllm_content_parts: k0 & 0x01 != 0,
        allow_vllm_message_fields: k0 & 0x01 != 0,
        allow_structural_tag: k0 & 0x01 != 0,
        allow_empty_messages: k0 & 0x01 != 0,
        allow_missing_model: k0 & 0x01 != 0,
        allow_any_tool_name: k0 & 0x01 != 0,
        null_as_unset: k0 & 0x01 != 0,
        clamp_logit_bias: k0 & 0x01 != 0,
        max_messages: 1 + usize::from(k1),
        ..ValidationPolicy::default()
    };
    let Ok(facts) = validate_chat(&value, &policy) else {
        return;
    };
    assert!(facts.message_count <= policy.max_messages);

    let limit_policy = LimitPolicy {
        default_max_tokens: (k0 & 0x02 != 0).then_some(u64::from(k1) * 13),
        max_tokens_cap: (k0 & 0x04 != 0).then_some(u64::from(k1) * 37),
        on_exceed: if k0 & 0x08 != 0 {
            OnExceed::Reject
        } else {
            OnExceed::Clamp
        },
        limit_field: if k0 & 0x10 != 0 {
            LimitField::MaxCompletionTokens
        } else {
            LimitField::MaxTokens
        },
        max_model_len: (k0 & 0x20 != 0).then_some(64 + u64::from(k1) * 101),
    };
    let prompt = (k0 & 0x80 != 0).then(|| tokens::upper_bound(&facts));
    let _ = tokens::estimate(&facts, 4.0);
    let _ = facts.prefix_key(4096);
    let decision = match resolve_limit(&facts, &limit_policy, prompt) {
        Ok(d) => d,
        Err(e) => {
            // The 400 it becomes must render.
            let _ = e.to_invalid();
            return;
        }
    };
    if let Some(d) = decision {
        assert!(d.limit >= 1, "a zero-token limit: {d:?}");
        if let Some(cap) = limit_policy.max_tokens_cap.filter(|c| *c > 0) {
            if limit_policy.on_exceed == OnExceed::Clamp {
                assert!(d.limit <= cap, "{d:?} above the cap {cap}");
            }
        }
        if let (Some(mml), Some(p)) = (limit_policy.max_model_len, prompt) {
            if facts.truncate_prompt_tokens.is_none() {
                assert!(p + d.limit <= mml, "{d:?} overflows the context");
            }
        }
    }
    let plan = RewritePlan {
        limit: decision.map(|d| (d.field, d.limit)),
        include_usage: facts.stream && facts.include_usage != Some(true),
    };
    check_rewrite(body, &value, &plan, &limits);
});

/// Rewrite `body` (whose value is `before`) with `plan` and check the result.
fn check_rewrite(body: &[u8], before: &Value, plan: &RewritePlan, limits: &JsonLimits) {
    let out = rewrite_body(body, plan).expect("a parsed body can always be rewritten");
    if plan.is_empty() {
        assert_eq!(&*out, body);
        return;
    }
    // The edit adds at most one level (`stream_options`), and no string.
    let relaxed = JsonLimits {
        max_depth: limits.max_depth.max(2),
        ..*limits
    };
    let after = parse_body(&out, &relaxed).unwrap_or_else(|e| {
        panic!(
            "the rewritten body does not parse ({e}): {}",
            String::from_utf8_lossy(&out)
        )
    });
    let mut expected = before.clone();
    let obj = expected.as_object_mut().expect("an object");
    if let Some((field, limit)) = plan.limit {
        obj.insert(field.as_str().to_owned(), Value::from(limit));
        obj.remove(field.other().as_str());
    }
    if plan.include_usage {
        match obj.get_mut("stream_options") {
            Some(Value::Object(o)) => {
                o.insert("include_usage".to_owned(), Value::Bool(true));
            }
            _ => {
                obj.insert(
                    "stream_options".to_owned(),
                    serde_json::json!({"include_usage": true}),
                );
            }
        }
    }
    assert_eq!(after, expected, "the rewrite changed more than the plan");
}
