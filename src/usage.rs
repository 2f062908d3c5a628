//! Token usage reported by the workers, and cheap extraction of it from JSON answers.
//!
//! The gateway needs the `usage` object of a non-streaming answer (chat, text completion, embeddings)
//! and of the usage-bearing stream chunks. Both are JSON objects with `usage` as a top-level key
//! (../shared/reference/chat-completions.md §3, §4, §6; vllm.md §5). Rather than parse a whole
//! answer to read three integers, `top_level_value` walks the top-level object, skipping strings
//! with `memchr` and containers with a depth counter, and only the `usage` value goes through
//! serde. On a 1.4 MB embeddings answer that is ~2.7x faster than a serde_json parse into a struct
//! keeping only `usage` (the floats are the cost); on a 4 KiB chat answer they are on par
//! (`cargo bench --bench sse`, group `usage_from_response`).

use memchr::memchr2;
use serde::Deserialize;

/// Token counts of one request, as billed and as counted against quotas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// `prompt_tokens_details.cached_tokens`: vLLM sends it only with
    /// `--enable-prompt-tokens-details` (vllm.md §5).
    pub cached_tokens: Option<u64>,
}

/// The wire form of a usage object (chat-completions.md §6). Only `prompt_tokens` is required:
/// embeddings answers carry no `completion_tokens`, and a missing `total_tokens` is the sum.
#[derive(Deserialize)]
struct RawUsage {
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    total_tokens: Option<u64>,
    prompt_tokens_details: Option<RawPromptDetails>,
}

#[derive(Deserialize)]
struct RawPromptDetails {
    cached_tokens: Option<u64>,
}

/// Usage of a non-streaming answer (`chat.completion`, `text_completion`, embeddings list), or of
/// one stream chunk's JSON: the top-level `usage` object. `None` when it is absent, `null`, or
/// malformed. Runs in time linear in the body and allocates nothing for the parts it skips.
pub fn usage_from_response(body: &[u8]) -> Option<Usage> {
    top_level_value(body, b"usage").and_then(usage_from_object)
}

/// Parses a usage object itself (`{"prompt_tokens":…,"completion_tokens":…,…}`).
pub fn usage_from_object(json: &[u8]) -> Option<Usage> {
    let raw: RawUsage = serde_json::from_slice(json).ok()?;
    Some(Usage {
        prompt_tokens: raw.prompt_tokens,
        completion_tokens: raw.completion_tokens,
        total_tokens: raw
            .total_tokens
            .unwrap_or(raw.prompt_tokens.saturating_add(raw.completion_tokens)),
        cached_tokens: raw.prompt_tokens_details.and_then(|d| d.cached_tokens),
    })
}

/// The raw bytes of the value of `key` in the top-level JSON object `json`, found without
/// parsing the other values. Keys are compared as raw bytes (a key spelled with `\u` escapes
/// does not match). Returns `None` when the key is absent or the structure is broken before
/// the key is reached; values are located, not validated (the caller parses the one it wants).
pub(crate) fn top_level_value<'a>(json: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut i = skip_ws(json, 0);
    if json.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(json, i);
        if json.get(i) != Some(&b'"') {
            // `}` of an empty or finished object, or broken JSON: either way no such key.
            return None;
        }
        let key_end = skip_string(json, i)?;
        let this_key = json.get(i + 1..key_end - 1)?;
        i = skip_ws(json, key_end);
        if json.get(i) != Some(&b':') {
            return None;
        }
        let value_start = skip_ws(json, i + 1);
        let value_end = skip_value(json, value_start)?;
        if this_key == key {
            return json.get(value_start..value_end);
        }
        i = skip_ws(json, value_end);
        if json.get(i) != Some(&b',') {
            return None;
        }
        i += 1;
    }
}

/// Index of the first byte at or after `i` that is not JSON whitespace.
pub(crate) fn skip_ws(json: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = json.get(i) {
        i += 1;
    }
    i
}

/// `json[i]` opens a string; returns the index just past its closing quote.
fn skip_string(json: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        let rest = json.get(j..)?;
        let k = j + memchr2(b'"', b'\\', rest)?;
        if json.get(k) == Some(&b'"') {
            return Some(k + 1);
        }
        // A backslash escapes exactly the next byte (`\"`, `\\`, or the `u` of `\uXXXX`).
        j = k + 2;
    }
}

/// `json[i]` starts a value; returns the index just past it.
fn skip_value(json: &[u8], i: usize) -> Option<usize> {
    match json.get(i)? {
        b'"' => skip_string(json, i),
        b'{' | b'[' => skip_container(json, i),
        _ => {
            // number, true, false, null: runs to the next delimiter
            let rest = json.get(i..)?;
            let len = rest
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(rest.len());
            (len > 0).then_some(i + len)
        }
    }
}

/// `json[i]` opens an object or array; returns the index just past its matching close.
/// Iterative (a depth counter, no recursion), so deep nesting cannot overflow the stack;
/// `{`/`[` and `}`/`]` are not told apart because only balanced JSON is being skipped.
fn skip_container(json: &[u8], i: usize) -> Option<usize> {
    let mut depth: usize = 0;
    let mut j = i;
    loop {
        let rest = json.get(j..)?;
        let off = rest
            .iter()
            .position(|b| matches!(b, b'"' | b'{' | b'[' | b'}' | b']'))?;
        j += off;
        match json.get(j)? {
            b'"' => {
                j = skip_string(json, j)?;
                continue;
            }
            b'{' | b'[' => depth += 1,
            _ => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(j + 1);
                }
            }
        }
        j += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    #[test]
    fn vllm_chat_completion() {
        let body = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"usage: \"usage\":{\"prompt_tokens\":9}","tool_calls":[]},"logprobs":null,"finish_reason":"stop","stop_reason":null}],"service_tier":null,"system_fingerprint":null,"usage":{"prompt_tokens":12,"total_tokens":30,"completion_tokens":18,"prompt_tokens_details":null},"prompt_logprobs":null,"kv_transfer_params":null}"#;
        assert_eq!(
            usage_from_response(body),
            Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 18,
                total_tokens: 30,
                cached_tokens: None
            })
        );
    }

    #[test]
    fn cached_tokens_and_pretty_printing() {
        let body = b"{\n  \"choices\" : [ ] ,\n  \"usage\" : {\n    \"prompt_tokens\": 100,\n    \"completion_tokens\": 5,\n    \"total_tokens\": 105,\n    \"prompt_tokens_details\": {\"cached_tokens\": 64}\n  }\n}\n";
        assert_eq!(
            usage_from_response(body),
            Some(Usage {
                prompt_tokens: 100,
                completion_tokens: 5,
                total_tokens: 105,
                cached_tokens: Some(64)
            })
        );
    }

    #[test]
    fn embeddings_usage_has_no_completion_tokens() {
        let body = br#"{"object":"list","data":[{"object":"embedding","embedding":[0.1,-0.2,3e-5],"index":0}],"model":"e","usage":{"prompt_tokens":7,"total_tokens":7}}"#;
        assert_eq!(
            usage_from_response(body),
            Some(Usage {
                prompt_tokens: 7,
                completion_tokens: 0,
                total_tokens: 7,
                cached_tokens: None
            })
        );
    }

    #[test]
    fn missing_total_is_the_sum() {
        assert_eq!(
            usage_from_object(br#"{"prompt_tokens":3,"completion_tokens":4}"#)
                .map(|u| u.total_tokens),
            Some(7)
        );
    }

    #[test]
    fn nested_usage_is_not_top_level() {
        let body = br#"{"kv_transfer_params":{"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}},"choices":[{"usage":{"prompt_tokens":5}}]}"#;
        assert_eq!(usage_from_response(body), None);
    }

    #[test]
    fn absent_null_or_malformed_is_none() {
        for body in [
            &b""[..],
            b"null",
            b"[1,2]",
            b"{}",
            br#"{"usage":null}"#,
            br#"{"usage":{"prompt_tokens":-1,"completion_tokens":0,"total_tokens":0}}"#,
            br#"{"usage":{"prompt_tokens":1.5,"completion_tokens":0,"total_tokens":0}}"#,
            br#"{"usage":{"completion_tokens":2}}"#,
            br#"{"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3"#,
            br#"{"choices":[{"a":"unterminated}]"#,
            br#"{"a" 1, "usage":{"prompt_tokens":1}}"#,
            b"{\"a\":\"\\",
            b"{\"a\":]}",
            b"{\"a\":}",
        ] {
            assert_eq!(
                usage_from_response(body),
                None,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn escaped_quotes_and_backslashes_in_skipped_strings() {
        let body = br#"{"a":"x\\","b":"\"usage\":{","c":["\\\"",{"d":"]}"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
        assert_eq!(usage_from_response(body).map(|u| u.total_tokens), Some(3));
    }

    #[test]
    fn deep_nesting_does_not_overflow_the_stack() {
        let mut body = b"{\"a\":".to_vec();
        body.extend(std::iter::repeat_n(b'[', 1_000_000));
        body.extend(std::iter::repeat_n(b']', 1_000_000));
        body.extend_from_slice(
            br#","usage":{"prompt_tokens":2,"completion_tokens":2,"total_tokens":4}}"#,
        );
        assert_eq!(usage_from_response(&body).map(|u| u.total_tokens), Some(4));
    }

    #[test]
    fn large_body_usage_at_the_end() {
        let content = "word \\\"quoted\\\" ".repeat(500_000);
        let body = format!(
            r#"{{"choices":[{{"message":{{"content":"{content}"}}}}],"usage":{{"prompt_tokens":1,"completion_tokens":2000000,"total_tokens":2000001}}}}"#
        );
        assert_eq!(
            usage_from_response(body.as_bytes()).map(|u| u.completion_tokens),
            Some(2_000_000)
        );
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            // quarters: exact in binary, so the float text round-trips through serde_json
            (-4000i32..4000).prop_map(|n| json!(f64::from(n) / 4.0)),
            // strings that look like JSON structure and like the key being searched for
            "[a-z\"\\\\{}\\[\\]:, \n\u{e9}]{0,12}".prop_map(Value::String),
            Just(Value::String("\"usage\":{\"prompt_tokens\":1}".into())),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("(usage|[a-z\"\\\\]{0,6})", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// The walker agrees with a full serde_json parse on where the top-level usage is.
        #[test]
        fn walker_agrees_with_serde(
            fields in prop::collection::btree_map("[a-z_\"]{0,8}", arb_json(), 0..6),
            usage in prop::option::of((0u64..1_000_000, 0u64..1_000_000, prop::option::of(0u64..100))),
            at in any::<prop::sample::Index>(),
            pretty in any::<bool>(),
        ) {
            let mut map: Vec<(String, Value)> = fields.into_iter().filter(|(k, _)| k != "usage").collect();
            if let Some((p, c, cached)) = usage {
                let mut u = json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c});
                if let Some(cached) = cached {
                    u["prompt_tokens_details"] = json!({"cached_tokens": cached});
                }
                let pos = at.index(map.len() + 1);
                map.insert(pos, ("usage".to_string(), u));
            }
            let obj = Value::Object(map.into_iter().collect());
            let text = if pretty { serde_json::to_vec_pretty(&obj) } else { serde_json::to_vec(&obj) };
            let text = text.map_err(|e| TestCaseError::fail(e.to_string()))?;
            let expected = obj.get("usage").map(|u| Usage {
                prompt_tokens: u["prompt_tokens"].as_u64().unwrap_or(0),
                completion_tokens: u["completion_tokens"].as_u64().unwrap_or(0),
                total_tokens: u["total_tokens"].as_u64().unwrap_or(0),
                cached_tokens: u.pointer("/prompt_tokens_details/cached_tokens").and_then(Value::as_u64),
            });
            prop_assert_eq!(usage_from_response(&text), expected);
            // every other top-level key is located exactly
            if let Value::Object(m) = &obj {
                for (k, v) in m {
                    if k.contains(['"', '\\']) { continue; }
                    let raw = top_level_value(&text, k.as_bytes());
                    let parsed: Option<Value> = raw.and_then(|r| serde_json::from_slice(r).ok());
                    prop_assert_eq!(parsed.as_ref(), Some(v));
                }
            }
        }

        #[test]
        fn never_panics_on_garbage(bytes in prop::collection::vec(
            prop_oneof![Just(b'{'), Just(b'}'), Just(b'['), Just(b']'), Just(b'"'), Just(b'\\'), Just(b':'), Just(b','), any::<u8>()], 0..200))
        {
            let _ = usage_from_response(&bytes);
            let mut with_head = b"{\"usage\":".to_vec();
            with_head.extend_from_slice(&bytes);
            let _ = usage_from_response(&with_head);
        }
    }
}
