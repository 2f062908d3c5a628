//! Token usage reported by the workers, and cheap extraction of it from JSON answers.
//!
//! The gateway needs the `usage` object of a non-streaming answer (chat, text completion, embeddings)
//! and of the usage-bearing stream chunks. Both are JSON objects with `usage` as a top-level key
//! (../shared/reference/chat-completions.md §3, §4, §6; vllm.md §5). Rather than parse a whole
//! answer to read three integers, the walkers here step over the top-level members, skipping
//! strings with `memchr` and containers with a depth counter, and read only the `usage` value.
//!
//! A whole answer is walked from its end ([`top_level_value_from_end`]): vLLM writes `usage` after
//! `choices` and `data`, so only the few members after it are stepped over, not the generated text
//! or the vectors. `cargo bench --bench sse`, group `usage_from_response`: 124 ns on a 4 KiB chat
//! answer (1.76 µs walking from the start, 1.70 µs for a serde_json parse keeping only `usage`),
//! 64 ns on a 1.4 MB embeddings answer (570 µs from the start, 1.18 ms with serde).

use memchr::{memchr2, memrchr};

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

/// Usage of a non-streaming answer (`chat.completion`, `text_completion`, embeddings list), or of
/// one stream chunk's JSON: the top-level `usage` object. `None` when it is absent, `null`, or
/// malformed. Runs in time linear in the body and allocates nothing.
///
/// The answer is walked from its end, so a structure broken before `usage` goes unnoticed: the
/// client's own parse rejects such an answer, and the gateway meters only answers that arrived
/// whole (`forward::whole_answer` reads to the worker's end of body first). Cut anywhere, the chat
/// answer in this module's tests has no usage.
pub fn usage_from_response(body: &[u8]) -> Option<Usage> {
    top_level_value_from_end(body, b"usage").and_then(usage_from_object)
}

/// Parses a usage object itself (`{"prompt_tokens":…,"completion_tokens":…,…}`), with the rules
/// of the wire form (chat-completions.md §6): only `prompt_tokens` is required (embeddings answers
/// carry no `completion_tokens`), a missing or `null` `total_tokens` is the sum, and
/// `prompt_tokens_details` may be `null`. Counts are JSON integers that fit a `u64`; anything else
/// (a fraction, a sign, a string, `null` where a count is required, a key given twice) makes the
/// whole object malformed, as a typed serde parse would. Other members are stepped over.
pub fn usage_from_object(json: &[u8]) -> Option<Usage> {
    let (mut prompt, mut completion, mut total, mut details) = (None, None, None, None);
    let complete = for_each_member(json, |key, value| match key {
        b"prompt_tokens" => set_once(&mut prompt, count(value)),
        b"completion_tokens" => set_once(&mut completion, count(value)),
        b"total_tokens" => set_once(&mut total, nullable(value, count)),
        b"prompt_tokens_details" => set_once(&mut details, nullable(value, cached_tokens)),
        _ => Step::Next,
    })?;
    if !complete {
        return None;
    }
    let prompt_tokens = prompt?;
    let completion_tokens = completion.unwrap_or(0);
    Some(Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: total
            .flatten()
            .unwrap_or(prompt_tokens.saturating_add(completion_tokens)),
        cached_tokens: details.flatten().flatten(),
    })
}

/// `prompt_tokens_details`: its `cached_tokens` (`None` when absent or `null`); `None` outside
/// when the object is malformed.
fn cached_tokens(json: &[u8]) -> Option<Option<u64>> {
    let mut cached = None;
    let complete = for_each_member(json, |key, value| match key {
        b"cached_tokens" => set_once(&mut cached, nullable(value, count)),
        _ => Step::Next,
    })?;
    complete.then_some(cached.flatten())
}

/// Fills `slot` with a well-formed value seen for the first time; a malformed value or a key given
/// twice (which a typed serde parse rejects too) is [`Step::Malformed`].
fn set_once<T>(slot: &mut Option<T>, parsed: Option<T>) -> Step {
    match (slot.is_none(), parsed) {
        (true, Some(v)) => {
            *slot = Some(v);
            Step::Next
        }
        _ => Step::Malformed,
    }
}

/// `Some(None)` for `null`, `Some(Some(v))` for a value `parse` accepts, `None` otherwise.
fn nullable<T>(value: &[u8], parse: impl Fn(&[u8]) -> Option<T>) -> Option<Option<T>> {
    if value == b"null" {
        Some(None)
    } else {
        parse(value).map(Some)
    }
}

/// A token count: a JSON integer without sign, fraction or exponent that fits a `u64` (JSON does
/// not allow leading zeros).
fn count(value: &[u8]) -> Option<u64> {
    match value {
        [b'0'] => Some(0),
        [b'1'..=b'9', ..] => value.iter().try_fold(0u64, |n, &b| {
            let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
            n.checked_mul(10)?.checked_add(u64::from(digit))
        }),
        _ => None,
    }
}

/// What [`for_each_member`]'s visitor wants next.
enum Step {
    Next,
    Malformed,
}

/// Calls `visit(key, raw value)` for each member of the JSON object that is all of `json`
/// (whitespace around it allowed), in order. `Some(true)` when every member was visited and the
/// object closed with nothing after it, `Some(false)` when `visit` found a value malformed, `None`
/// when the structure is broken. Keys are raw bytes (no unescaping).
fn for_each_member<'a>(
    json: &'a [u8],
    mut visit: impl FnMut(&'a [u8], &'a [u8]) -> Step,
) -> Option<bool> {
    let mut i = skip_ws(json, 0);
    if json.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(json, i + 1);
    if json.get(i) == Some(&b'}') {
        return (skip_ws(json, i + 1) == json.len()).then_some(true);
    }
    loop {
        if json.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = skip_string(json, i)?;
        let key = json.get(i + 1..key_end - 1)?;
        i = skip_ws(json, key_end);
        if json.get(i) != Some(&b':') {
            return None;
        }
        let value_start = skip_ws(json, i + 1);
        let value_end = skip_value(json, value_start)?;
        if let Step::Malformed = visit(key, json.get(value_start..value_end)?) {
            return Some(false);
        }
        i = skip_ws(json, value_end);
        match json.get(i) {
            Some(b',') => i = skip_ws(json, i + 1),
            Some(b'}') => return (skip_ws(json, i + 1) == json.len()).then_some(true),
            _ => return None,
        }
    }
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

/// Like [`top_level_value`], walking the top-level object from its end: the raw value of the
/// last top-level `key`. For valid JSON both find the same value (keys are unique); the walk
/// notices a broken structure only where it passes. A `"` is escaped exactly when an odd run of
/// backslashes precedes it (the only escape ending in `\` is `\\` itself), so strings are
/// recognised from their end as surely as from their start.
pub(crate) fn top_level_value_from_end<'a>(json: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let [value] = top_level_values_from_end(json, [key]);
    value
}

/// [`top_level_value_from_end`] for several keys in one walk, which stops once all are found:
/// a stream's usage-only chunk ends with `"choices":[],"usage":{…}}`, so both take a few dozen
/// bytes. Each key's value is `None` if the walk did not reach it intact.
pub(crate) fn top_level_values_from_end<'a, const N: usize>(
    json: &'a [u8],
    keys: [&[u8]; N],
) -> [Option<&'a [u8]>; N] {
    let mut found = [None; N];
    let _ = walk_back(json, |key, value| {
        for (slot, wanted) in found.iter_mut().zip(keys) {
            if slot.is_none() && key == wanted {
                *slot = Some(value);
            }
        }
        found.iter().all(Option::is_some)
    });
    found
}

/// Visits the top-level members of the object `json` from the last to the first, until `visit`
/// returns true. `None` where the structure is broken.
fn walk_back<'a>(json: &'a [u8], mut visit: impl FnMut(&'a [u8], &'a [u8]) -> bool) -> Option<()> {
    let close = skip_ws_back(json, json.len()).checked_sub(1)?;
    if json.get(close) != Some(&b'}') {
        return None;
    }
    // `delim` is the `}` or `,` just after the member being read.
    let mut delim = close;
    loop {
        let value_end = skip_ws_back(json, delim);
        let value_start = skip_value_back(json, value_end)?;
        let colon = skip_ws_back(json, value_start).checked_sub(1)?;
        if json.get(colon) != Some(&b':') {
            // `{}`, or broken JSON.
            return None;
        }
        let key_end = skip_ws_back(json, colon);
        let key_start = skip_string_back(json, key_end)?;
        if visit(
            json.get(key_start + 1..key_end - 1)?,
            json.get(value_start..value_end)?,
        ) {
            return Some(());
        }
        delim = skip_ws_back(json, key_start).checked_sub(1)?;
        if json.get(delim) != Some(&b',') {
            // The object's opening `{` (every member was visited), or broken JSON.
            return None;
        }
    }
}

/// Index just past the last byte before `end` that is not JSON whitespace (0 if there is none).
fn skip_ws_back(json: &[u8], mut end: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = end.checked_sub(1).and_then(|i| json.get(i)) {
        end -= 1;
    }
    end
}

/// Whether the byte at `i` is escaped: preceded by an odd run of backslashes.
fn escaped(json: &[u8], i: usize) -> bool {
    let before = json.get(..i).unwrap_or_default();
    before.iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 1
}

/// `json[end - 1]` closes a string; returns the index of its opening quote.
fn skip_string_back(json: &[u8], end: usize) -> Option<usize> {
    let close = end.checked_sub(1)?;
    if json.get(close) != Some(&b'"') || escaped(json, close) {
        return None;
    }
    let mut before = close;
    loop {
        let q = memrchr(b'"', json.get(..before)?)?;
        if !escaped(json, q) {
            return Some(q);
        }
        before = q;
    }
}

/// `json[end - 1]` ends a value; returns the index where it starts.
fn skip_value_back(json: &[u8], end: usize) -> Option<usize> {
    let last = end.checked_sub(1)?;
    match json.get(last)? {
        b'"' => skip_string_back(json, end),
        b'}' | b']' => skip_container_back(json, last),
        b',' | b':' | b'{' | b'[' => None,
        _ => {
            // number, true, false, null: runs back to the previous delimiter
            let head = json.get(..end)?;
            let start = head
                .iter()
                .rposition(|b| {
                    matches!(b, b',' | b':' | b'{' | b'[' | b' ' | b'\t' | b'\n' | b'\r')
                })
                .map_or(0, |p| p + 1);
            Some(start)
        }
    }
}

/// `json[close]` closes an object or array; returns the index of its matching opening bracket.
/// Iterative, like [`skip_container`].
fn skip_container_back(json: &[u8], close: usize) -> Option<usize> {
    let mut depth: usize = 0;
    let mut end = close + 1;
    loop {
        let j = json
            .get(..end)?
            .iter()
            .rposition(|b| matches!(b, b'"' | b'{' | b'[' | b'}' | b']'))?;
        match json.get(j)? {
            b'"' => {
                end = skip_string_back(json, j + 1)?;
                continue;
            }
            b'}' | b']' => depth += 1,
            _ => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(j);
                }
            }
        }
        end = j;
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
            br#"{"usage":{"prompt_tokens":1}} x"#,
            br#"{"usage":{"prompt_tokens":1},}"#,
            br#"{"usage":{"prompt_tokens":1} "x":1}"#,
            br#"{"usage":{"prompt_tokens":1,"prompt_tokens":1}}"#,
            br#"{"usage":{"prompt_tokens":1,"completion_tokens":null}}"#,
            br#"{"usage":{"prompt_tokens":01}}"#,
            br#"{"usage":{"prompt_tokens":"1"}}"#,
            br#"{"usage":{"prompt_tokens":18446744073709551616}}"#,
            br#"{"usage":{"prompt_tokens":1,"prompt_tokens_details":{"cached_tokens":-1}}}"#,
            br#"{"usage":{"prompt_tokens":1,"prompt_tokens_details":3}}"#,
            br#"{"usage":{"prompt_tokens":1}"#,
            br#"{"usage":{"prompt_tokens":1}}}"#,
            br#"{"x":"\"usage":{"prompt_tokens":1}}"#,
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

    /// Walked from the end, a break before `usage` is not seen (the client's parse fails on it);
    /// an answer cut short is, since it has no closing brace.
    #[test]
    fn breakage_is_seen_where_the_walk_passes() {
        let broken_before = br#"{"a" 1, "usage":{"prompt_tokens":1}}"#;
        assert_eq!(
            usage_from_response(broken_before).map(|u| u.prompt_tokens),
            Some(1)
        );
        assert_eq!(top_level_value(broken_before, b"usage"), None);
        let whole = br#"{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
        for cut in 0..whole.len() {
            assert_eq!(
                usage_from_response(&whole[..cut]),
                None,
                "{}",
                String::from_utf8_lossy(&whole[..cut])
            );
        }
        assert!(usage_from_response(whole).is_some());
    }

    #[test]
    fn several_keys_in_one_walk_from_the_end() {
        let chunk = br#"{"id":"c","choices":[],"x":{"usage":1},"usage":{"prompt_tokens":1}}"#;
        assert_eq!(
            top_level_values_from_end(chunk, [b"choices", b"usage", b"id"]),
            [
                Some(&b"[]"[..]),
                Some(&br#"{"prompt_tokens":1}"#[..]),
                Some(&br#""c""#[..])
            ]
        );
        assert_eq!(
            top_level_values_from_end(chunk, [b"missing", b"x"]),
            [None, Some(&br#"{"usage":1}"#[..])]
        );
        // Broken before `id`: what the walk reached intact is still found.
        let broken = br#"{"id" "c","choices":[],"usage":{}}"#;
        assert_eq!(
            top_level_values_from_end(broken, [b"usage", b"id"]),
            [Some(&b"{}"[..]), None]
        );
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

    /// The typed serde parse the hand-written one replaced, kept as the reference.
    fn serde_usage(json: &[u8]) -> Option<Usage> {
        #[derive(serde::Deserialize)]
        struct RawUsage {
            prompt_tokens: u64,
            #[serde(default)]
            completion_tokens: u64,
            total_tokens: Option<u64>,
            prompt_tokens_details: Option<RawPromptDetails>,
        }
        #[derive(serde::Deserialize)]
        struct RawPromptDetails {
            cached_tokens: Option<u64>,
        }
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

    fn usage_key() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            Just("prompt_tokens"),
            Just("completion_tokens"),
            Just("total_tokens"),
            Just("prompt_tokens_details"),
            Just("other"),
        ]
    }

    /// Counts and near misses. Arrays are left out: serde also reads a struct from an array
    /// (`[1,2,3]`), which no worker sends and the gateway does not accept.
    /// `v` if it is JSON, else `null`: members the parser steps over are located, not validated
    /// (serde's parse rejects `{"other":007}`; the walker does not look inside `other`).
    fn valid_json(v: &str) -> &str {
        if serde_json::from_str::<serde::de::IgnoredAny>(v).is_ok() {
            v
        } else {
            "null"
        }
    }

    fn usage_value() -> impl Strategy<Value = String> {
        // Mostly well-formed, so that whole objects often are and a rule broken once shows.
        let near_miss = prop_oneof![
            Just(u64::MAX.to_string()),
            Just("18446744073709551616".to_string()),
            Just("0".to_string()),
            Just("-0".to_string()),
            Just("-3".to_string()),
            Just("1.5".to_string()),
            Just("2.0".to_string()),
            Just("1e3".to_string()),
            Just("007".to_string()),
            Just("null".to_string()),
            Just("\"12\"".to_string()),
            Just("true".to_string()),
        ];
        let count = prop_oneof![
            2 => (0u64..100_000).prop_map(|n| n.to_string()),
            1 => near_miss,
        ];
        prop_oneof![
            6 => count.clone(),
            2 => prop::collection::vec(
                (prop_oneof![Just("cached_tokens"), Just("audio_tokens")], count),
                0..3,
            )
            .prop_map(|m| {
                let inner: Vec<String> = m
                    .iter()
                    .map(|(k, v)| format!("\"{k}\":{}", if *k == "cached_tokens" { v } else { valid_json(v) }))
                    .collect();
                format!("{{{}}}", inner.join(","))
            }),
            1 => Just("{\"nested\":[1,{\"prompt_tokens\":2}],\"s\":\"}\"}".to_string()),
        ]
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
                    let from_end = top_level_value_from_end(&text, k.as_bytes());
                    prop_assert_eq!(from_end, raw, "{}", k);
                    let [both_k, both_usage] = top_level_values_from_end(&text, [k.as_bytes(), b"usage"]);
                    prop_assert_eq!(both_k, raw);
                    prop_assert_eq!(both_usage, top_level_value(&text, b"usage"));
                }
            }
        }

        /// The hand-written usage parser accepts and rejects what a typed serde parse does.
        #[test]
        fn usage_object_agrees_with_serde(
            members in prop::collection::vec((usage_key(), usage_value()), 0..7),
            spaced in any::<bool>(),
        ) {
            let (colon, comma) = if spaced { (" : ", " ,\n ") } else { (":", ",") };
            let body: Vec<String> = members
                .iter()
                .map(|(k, v)| format!("\"{k}\"{colon}{}", if *k == "other" { valid_json(v) } else { v }))
                .collect();
            let text = format!("{{{}}}", body.join(comma));
            prop_assert_eq!(usage_from_object(text.as_bytes()), serde_usage(text.as_bytes()), "{}", text);
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
