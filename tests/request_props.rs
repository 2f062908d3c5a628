//! Properties of the request layer:
//! 1. requests built from the specs' shapes, with every field in range, are accepted;
//! 2. the max-token rewrite changes the limit fields (and `stream_options` when asked) and
//!    nothing else: the rewritten body parses to the original plus/minus exactly those
//!    members, and every other top-level member is byte-identical, whatever the
//!    formatting (whitespace, key order, escaped keys);
//! 3. no input panics the parser, the validator or the splice.

use proptest::prelude::*;
use serde_json::{json, Value};
use vllm_gateway::request::splice::top_level_members;
use vllm_gateway::request::{
    parse_body, rewrite_body, validate_chat, JsonLimits, LimitField, RewritePlan, ValidationPolicy,
};

// ---------- generators of valid requests (chat-completions.md §1, §2; vllm.md §4)

#[path = "common/chat_shapes.rs"]
mod chat_shapes;
use chat_shapes::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn spec_shaped_requests_are_accepted(body in valid_request(), seed in 1u64..) {
        let mut text = String::new();
        write_irregular(&body, &mut Rng(seed), &mut text);
        let parsed = parse_body(text.as_bytes(), &JsonLimits::default())
            .map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
        prop_assert_eq!(&parsed, &body);
        let facts = validate_chat(&parsed, &ValidationPolicy::default())
            .map_err(|e| TestCaseError::fail(format!("{e:?}\n{body:#}")))?;
        prop_assert_eq!(facts.message_count, body["messages"].as_array().map_or(0, Vec::len));
    }

    #[test]
    fn the_rewrite_changes_only_the_limit_members(
        body in valid_request(),
        seed in 1u64..,
        completion in any::<bool>(),
        limit in 1u64..1_000_000,
        include_usage in any::<bool>(),
    ) {
        let mut text = String::new();
        write_irregular(&body, &mut Rng(seed), &mut text);
        let original = text.as_bytes();
        let field = if completion { LimitField::MaxCompletionTokens } else { LimitField::MaxTokens };
        let plan = RewritePlan { limit: Some((field, limit)), include_usage };
        let out = rewrite_body(original, &plan).map_err(|e| TestCaseError::fail(e.to_string()))?;

        // Semantically: the original plus/minus exactly the planned members.
        let mut expected = body.clone();
        let obj = expected.as_object_mut().expect("object");
        obj.remove(field.other().as_str());
        obj.insert(field.as_str().to_owned(), json!(limit));
        if include_usage {
            match obj.get_mut("stream_options") {
                Some(Value::Object(so)) => {
                    so.insert("include_usage".into(), json!(true));
                }
                _ => {
                    obj.insert("stream_options".into(), json!({"include_usage": true}));
                }
            }
        }
        let got = parse_body(&out, &JsonLimits::default())
            .map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&out))))?;
        prop_assert_eq!(&got, &expected);

        // Byte for byte: every other member keeps its exact key and value bytes.
        let before = top_level_members(original).expect("scan original");
        let after = top_level_members(&out).expect("scan rewritten");
        let edited = ["max_tokens", "max_completion_tokens", "stream_options"];
        for m in &before.members {
            if edited.contains(&decoded_key(original, m.key.clone()).as_str()) {
                continue;
            }
            let key = &original[m.key.clone()];
            let twin = after.members.iter().find(|a| &out[a.key.clone()] == key);
            prop_assert!(twin.is_some(), "member {} lost", String::from_utf8_lossy(key));
            if let Some(a) = twin {
                prop_assert_eq!(&original[m.value.clone()], &out[a.value.clone()]);
            }
        }

        // Applying the same plan again changes nothing.
        let again = rewrite_body(&out, &plan).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&again[..], &out[..]);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_body(&bytes, &JsonLimits::default());
        let plan = RewritePlan { limit: Some((LimitField::MaxTokens, 7)), include_usage: true };
        let _ = rewrite_body(&bytes, &plan);
    }

    #[test]
    fn arbitrary_json_never_panics_the_validator(v in any_json(), fields in prop::collection::btree_map(
        prop_oneof![
            Just("messages".to_owned()), Just("tools".to_owned()), Just("tool_choice".to_owned()),
            Just("stop".to_owned()), Just("logit_bias".to_owned()), Just("n".to_owned()),
            Just("response_format".to_owned()), Just("structured_outputs".to_owned()),
            Just("metadata".to_owned()), Just("stream_options".to_owned()), Just("max_tokens".to_owned()),
            Just("repetition_detection".to_owned()), Just("audio".to_owned()), Just("prediction".to_owned()),
        ],
        any_json(),
        0..6,
    )) {
        let _ = validate_chat(&v, &ValidationPolicy::default());
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        for (k, val) in fields {
            body[k] = val;
        }
        let _ = validate_chat(&body, &ValidationPolicy::default());
        let lenient = ValidationPolicy {
            allow_custom_roles: true,
            allow_vllm_content_parts: true,
            allow_vllm_message_fields: true,
            null_as_unset: true,
            ..ValidationPolicy::default()
        };
        let _ = validate_chat(&body, &lenient);
    }

    #[test]
    fn mutated_valid_messages_never_panic(body in valid_request(), junk in any_json(), pick in any::<usize>()) {
        // Replace one message, or one key inside it, with arbitrary JSON.
        let mut body = body;
        if let Some(msgs) = body["messages"].as_array_mut() {
            let i = pick % msgs.len();
            match msgs[i].as_object_mut() {
                Some(m) if pick % 2 == 0 => {
                    let keys: Vec<String> = m.keys().cloned().collect();
                    let k = keys[pick % keys.len()].clone();
                    m.insert(k, junk);
                }
                _ => msgs[i] = junk,
            }
        }
        let _ = validate_chat(&body, &ValidationPolicy::default());
    }
}
