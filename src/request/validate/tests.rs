//! Unit tests for the rule walk. The rule-by-rule table (with boundaries) lives in
//! tests/fixtures/validation_cases.json; these cover facts, policy switches, ordering and
//! hostile shapes.

use serde_json::{json, Value};

use super::*;

fn ok(body: Value) -> ChatFacts {
    validate_chat(&body, &ValidationPolicy::default()).unwrap_or_else(|e| panic!("{e:?}"))
}

fn bad(body: Value) -> Invalid {
    match validate_chat(&body, &ValidationPolicy::default()) {
        Ok(_) => panic!("accepted: {body}"),
        Err(e) => e,
    }
}

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

#[test]
fn facts_are_collected_in_the_same_walk() {
    let f = ok(json!({
        "model": "llama",
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "u"}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"}
        ],
        "stream": true,
        "stream_options": {"include_usage": false},
        "n": 2,
        "max_tokens": 100,
        "max_completion_tokens": 50,
        "min_tokens": 5,
        "truncate_prompt_tokens": -1,
        "unknown_field": {"anything": [1, 2]}
    }));
    assert_eq!(f.model.as_deref(), Some("llama"));
    assert!(f.stream);
    assert_eq!(f.include_usage, Some(false));
    assert_eq!(f.n, 2);
    assert_eq!(
        (f.max_tokens, f.max_completion_tokens),
        (Some(100), Some(50))
    );
    assert_eq!(f.requested_limit(), Some(50));
    assert_eq!(f.min_tokens, Some(5));
    assert_eq!(f.truncate_prompt_tokens, Some(-1));
    assert_eq!(f.message_count, 4);
    assert_eq!(f.non_text_parts, 1);
    // system(6)+sys(3) user(4)+look(4) assistant(9)+c1(2)+f(1)+{}(2) tool(4)+c1(2)+42(2)
    assert_eq!(f.prompt_text_bytes, 39);
}

#[test]
fn defaults_when_fields_are_absent_or_null() {
    let f = ok(
        json!({"model": "m", "messages": [user("hi")], "n": null, "stream": null, "max_tokens": null, "min_tokens": 0}),
    );
    assert_eq!(f.n, 1);
    assert!(!f.stream);
    assert_eq!(f.include_usage, None);
    assert_eq!(f.max_tokens, None);
    assert_eq!(f.min_tokens, None);
}

#[test]
fn prefix_keys_follow_the_leading_messages() {
    let sys = json!({"role": "system", "content": "You are a careful assistant. ".repeat(40)});
    let a = ok(json!({"model": "m", "messages": [sys, user("question one")]}));
    let b = ok(json!({"model": "m", "messages": [sys, user("another question")]}));
    let c = ok(
        json!({"model": "m", "messages": [{"role": "system", "content": "Different."}, user("question one")]}),
    );
    // Same 1 KiB of system prompt: same key; whole prompts differ.
    assert_eq!(a.prefix_key(1024), b.prefix_key(1024));
    assert_ne!(a.prefix_key(usize::MAX), b.prefix_key(usize::MAX));
    assert_ne!(a.prefix_key(1024), c.prefix_key(1024));
    // The key does not depend on fields outside the messages.
    let d =
        ok(json!({"model": "other", "temperature": 0.5, "messages": [sys, user("question one")]}));
    assert_eq!(a.prefix_key(usize::MAX), d.prefix_key(usize::MAX));
    assert!(a.prefix_bytes() <= ValidationPolicy::default().prefix_window_bytes);
}

#[test]
fn a_body_that_is_not_an_object_is_invalid() {
    let e = bad(json!([1]));
    assert_eq!((e.param.as_str(), e.code), ("", codes::INVALID_TYPE));
}

#[test]
fn unknown_top_level_fields_pass_but_unknown_nested_keys_do_not() {
    ok(json!({"model": "m", "messages": [user("hi")], "guided_json": {"x": 1}, "foo": null}));
    let e = bad(json!({"model": "m", "messages": [{"role": "user", "content": "hi", "foo": 1}]}));
    assert_eq!(
        (e.param.as_str(), e.code),
        ("messages[0].foo", codes::UNKNOWN_PARAMETER)
    );
}

#[test]
fn messages_are_checked_before_missing_model_is_reported() {
    // Top-level keys in map order first, then required keys.
    let e = bad(json!({"messages": [{"role": "robot", "content": "x"}]}));
    assert_eq!(e.param, "messages[0].role");
    let e = bad(json!({"messages": [user("x")]}));
    assert_eq!(
        (e.param.as_str(), e.code),
        ("model", codes::MISSING_REQUIRED)
    );
}

#[test]
fn policy_switches_relax_their_rule_only() {
    let relaxed = ValidationPolicy {
        allow_custom_roles: true,
        allow_vllm_content_parts: true,
        allow_vllm_message_fields: true,
        allow_structural_tag: true,
        allow_empty_messages: true,
        allow_missing_model: true,
        allow_any_tool_name: true,
        null_as_unset: true,
        clamp_logit_bias: true,
        max_n: 16384,
        max_logprobs: -1,
        ..ValidationPolicy::default()
    };
    let body = json!({
        "messages": [
            {"role": "narrator", "content": [{"type": "video_url", "video_url": {"url": "v"}}]},
            {"role": "user", "content": [{"image_url": "https://x/y.png", "uuid": "i1"}, {"type": "audio_url", "audio_url": {"url": "a"}}]},
            {"role": "assistant", "content": "ok", "reasoning_content": "because"}
        ],
        "response_format": {"type": "structural_tag", "format": {}},
        "tools": [{"type": "function", "function": {"name": "ns.tool:v1"}}],
        "tool_choice": null,
        "logit_bias": {"7": 250},
        "n": 1000,
        "top_logprobs": -1,
        "logprobs": true
    });
    let f = validate_chat(&body, &relaxed).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(f.model, None);
    assert_eq!(f.non_text_parts, 3);
    assert!(validate_chat(&json!({"messages": []}), &relaxed).is_ok());
    // And each is refused under the default policy.
    assert!(validate_chat(&body, &ValidationPolicy::default()).is_err());
}

#[test]
fn the_policy_deserializes_with_defaults_and_denies_unknown_keys() {
    let p: ValidationPolicy =
        serde_json::from_value(json!({"max_n": 4, "allow_custom_roles": true})).unwrap();
    assert_eq!(p.max_n, 4);
    assert!(p.allow_custom_roles);
    assert_eq!(p.max_messages, 2048);
    assert!(serde_json::from_value::<ValidationPolicy>(json!({"max_m": 4})).is_err());
}

#[test]
fn hostile_shapes_are_refused_without_panicking() {
    let cases = [
        json!({"model": "m", "messages": "hi"}),
        json!({"model": "m", "messages": [null]}),
        json!({"model": "m", "messages": [[]]}),
        json!({"model": "m", "messages": [{"role": null}]}),
        json!({"model": "m", "messages": [{"role": "user", "content": [null]}]}),
        json!({"model": "m", "messages": [{"role": "user", "content": [{"type": 1}]}]}),
        json!({"model": "m", "messages": [{"role": "user", "content": {"type": "text"}}]}),
        json!({"model": "m", "messages": [user("x")], "tools": [{"type": "function", "function": "f"}]}),
        json!({"model": "m", "messages": [user("x")], "tool_choice": {"type": "function", "function": {"name": null}}}),
        json!({"model": "m", "messages": [user("x")], "n": 1e300}),
        json!({"model": "m", "messages": [user("x")], "seed": -1e300}),
        json!({"model": "m", "messages": [user("x")], "max_tokens": 18446744073709551615u64}),
        json!({"model": "m", "messages": [user("x")], "logit_bias": {"99999999999999999999999": 1}}),
        json!({"model": "m", "messages": [user("x")], "stop": [[]]}),
        json!({"model": "m", "messages": [user("x")], "metadata": {"k": 1}}),
    ];
    for c in cases {
        assert!(
            validate_chat(&c, &ValidationPolicy::default()).is_err(),
            "{c}"
        );
    }
}

#[test]
fn huge_and_deep_but_valid_bodies_pass() {
    let msgs: Vec<Value> = (0..2048).map(|i| user(&format!("message {i}"))).collect();
    let f = ok(json!({"model": "m", "messages": msgs}));
    assert_eq!(f.message_count, 2048);
    let msgs: Vec<Value> = (0..2049).map(|i| user(&format!("message {i}"))).collect();
    let e = bad(json!({"model": "m", "messages": msgs}));
    assert_eq!(
        (e.param.as_str(), e.code),
        ("messages", codes::ARRAY_ABOVE_MAX_LENGTH)
    );
}

#[test]
fn prefix_keys_see_media_identity_and_tool_calls() {
    let img = |url: &str| {
        json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": url}}]}]})
    };
    assert_ne!(
        ok(img("https://x/a.png")).prefix_key(4096),
        ok(img("https://x/b.png")).prefix_key(4096)
    );
    let call = |args: &str| {
        json!({"model": "m", "messages": [user("q"), {"role": "assistant", "content": null, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": args}}]}]})
    };
    assert_ne!(
        ok(call("{}")).prefix_key(4096),
        ok(call("{\"a\":1}")).prefix_key(4096)
    );
    // Same text as a string or as one text part: same prompt, same key.
    let as_string = ok(json!({"model": "m", "messages": [user("hello")]}));
    let as_part = ok(
        json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]}),
    );
    assert_eq!(as_string.prefix_key(4096), as_part.prefix_key(4096));
}
