//! What one complete SSE event says: its `data`, and from that the facts the gateway keeps about
//! the stream (events, text deltas, usage, `[DONE]`, in-band errors).
//!
//! Most events are plain text deltas. They are judged with `memmem` byte searches; serde only runs
//! on the rare events that must be parsed (the usage-only chunk, an error) and, lazily, on the last
//! cumulative usage. The searches look for a quoted key followed by `:`. In valid JSON that byte
//! pattern can only be an object key: inside a string every `"` is escaped as `\"`, and a string
//! value is never followed by `:`. The key may still be nested, which is why the events that matter
//! are confirmed with the top-level walker from `crate::usage` before they count.

use std::sync::LazyLock;

use memchr::{memchr, memchr2, memmem::Finder};

use super::error::InBandError;
use crate::usage::{
    skip_ws, top_level_value, top_level_values_from_end, usage_from_object, usage_from_response,
    Usage,
};

/// Byte-pattern finders, built once for the process (memmem builds its search tables in `new`).
struct Finders {
    /// Keys whose non-empty string value is generated text: chat `delta.content`, reasoning text
    /// (`reasoning` in vLLM 0.33, `reasoning_content` in 0.11: vllm.md §5), tool-call argument
    /// fragments (chat-completions.md §4), and `text` of `/v1/completions` chunks.
    text_keys: [Finder<'static>; 5],
    usage: Finder<'static>,
    choices: Finder<'static>,
    error: Finder<'static>,
}

static FINDERS: LazyLock<Finders> = LazyLock::new(|| Finders {
    text_keys: [
        Finder::new(b"\"content\""),
        Finder::new(b"\"reasoning\""),
        Finder::new(b"\"reasoning_content\""),
        Finder::new(b"\"arguments\""),
        Finder::new(b"\"text\""),
    ],
    usage: Finder::new(b"\"usage\""),
    choices: Finder::new(b"\"choices\""),
    error: Finder::new(b"\"error\""),
});

/// What the scanner has learnt from the events seen so far.
#[derive(Debug, Default)]
pub(super) struct StreamFacts {
    pub(super) events: u64,
    pub(super) content_events: u64,
    pub(super) done: bool,
    pub(super) malformed: bool,
    /// From the usage-only chunk (`"choices":[]`), the request's totals (vllm.md §5).
    pub(super) final_usage: Option<Usage>,
    pub(super) running_usage: RunningUsage,
    pub(super) error: Option<InBandError>,
}

/// The latest cumulative usage (`continuous_usage_stats`, vllm.md §5: every chunk carries one).
/// Only the last one matters, so the chunk's data is copied into a reused buffer and parsed on
/// demand instead of once per event.
#[derive(Debug, Default)]
pub(super) struct RunningUsage {
    raw: Vec<u8>,
    unparsed: bool,
    parsed: Option<Usage>,
}

impl RunningUsage {
    fn record(&mut self, data: &[u8]) {
        self.raw.clear();
        self.raw.extend_from_slice(data);
        self.unparsed = true;
    }

    /// Parses the recorded chunk if that has not been done yet; `Err` if it does not parse.
    pub(super) fn get(&mut self) -> Result<Option<Usage>, ()> {
        if self.unparsed {
            self.unparsed = false;
            self.parsed = usage_from_response(&self.raw);
            if self.parsed.is_none() {
                return Err(());
            }
        }
        Ok(self.parsed)
    }
}

/// The last byte of `data` that is not JSON whitespace.
fn last_non_ws(data: &[u8]) -> Option<u8> {
    data.iter()
        .rev()
        .copied()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

impl StreamFacts {
    /// Records one complete event (its raw bytes, terminator included). Returns true when it is
    /// the usage-only chunk, the one `UsageMode::StripUsageChunk` removes.
    pub(super) fn on_event(&mut self, event: &[u8], scratch: &mut Vec<u8>) -> bool {
        let Some(data) = event_data(event, scratch) else {
            // Comments (`: keep-alive`, vllm.md §5) and events without data are not dispatched
            // by clients (chat-completions.md §5).
            return false;
        };
        self.events += 1;
        // The openai client stops on a data value that starts with `[DONE]` (chat-completions.md §4).
        if data.starts_with(b"[DONE]") {
            self.done = true;
            return false;
        }
        if data.get(skip_ws(data, 0)) != Some(&b'{') || last_non_ws(data) != Some(b'}') {
            // Every chunk is one JSON object (chat-completions.md §4); the client would fail on
            // this. Checking both ends is O(1) and catches the usual breakage, an event cut short
            // (a full parse of every event would cost what the scanner exists to avoid).
            self.malformed = true;
            return false;
        }
        let f = &*FINDERS;
        if delivers_text(data, f) {
            self.content_events += 1;
        }
        let mut usage_only = false;
        // vLLM's regular chunks have no `usage` key; OpenAI's have `"usage":null` (vllm.md §5).
        if key_with_value(data, &f.usage).is_some_and(|v| v.first() == Some(&b'{')) {
            if key_with_value(data, &f.choices).is_some_and(is_empty_array) {
                usage_only = self.on_usage_only_chunk(data);
            } else {
                self.running_usage.record(data);
            }
        }
        if self.error.is_none() && key_with_value(data, &f.error).is_some() {
            self.on_error_candidate(data);
        }
        usage_only
    }

    /// The final usage chunk comes once per stream, so it is parsed right away: the strip
    /// decision needs it confirmed (top-level `choices` empty, top-level `usage` valid).
    fn on_usage_only_chunk(&mut self, data: &[u8]) -> bool {
        // One walk from the end, where both keys are (vllm.md §5).
        let [choices, usage_raw] = top_level_values_from_end(data, [b"choices", b"usage"]);
        let choices_empty = choices.is_some_and(is_empty_array);
        let usage = usage_raw.and_then(usage_from_object);
        match usage {
            Some(u) if choices_empty => {
                self.final_usage = Some(u);
                true
            }
            Some(_) => {
                // Only a nested `choices` was empty: a cumulative usage chunk after all.
                self.running_usage.record(data);
                false
            }
            None => {
                // Either broken JSON, or a top-level usage that is not a usage object (negative
                // counts…): both malformed. A usage key found only nested is neither.
                self.flag_if_invalid_json(data);
                if usage_raw.is_some() {
                    self.malformed = true;
                }
                false
            }
        }
    }

    /// `{"error": …}` (chat-completions.md §4, vllm.md §5–§6): the openai client raises
    /// `APIError` when the value is truthy, so `null`, `false` and empty values are not errors.
    fn on_error_candidate(&mut self, data: &[u8]) {
        match top_level_value(data, b"error") {
            Some(value) => match serde_json::from_slice::<serde_json::Value>(value) {
                Ok(v) => self.error = InBandError::from_json(&v),
                Err(_) => self.malformed = true,
            },
            None => self.flag_if_invalid_json(data),
        }
    }

    /// A key was found by byte search but the walker could not confirm it at the top level:
    /// either it is nested (fine) or the JSON is broken (malformed). Rare path, so a full parse
    /// settles it.
    fn flag_if_invalid_json(&mut self, data: &[u8]) {
        if serde_json::from_slice::<serde::de::IgnoredAny>(data).is_err() {
            self.malformed = true;
        }
    }
}

/// The event's data (chat-completions.md §5): `data` field values, one leading space stripped,
/// several joined with `\n`. `None` when the event has no `data` field. A single data line (what
/// vLLM sends) is returned in place; several are joined in `scratch`.
fn event_data<'a>(event: &'a [u8], scratch: &'a mut Vec<u8>) -> Option<&'a [u8]> {
    let mut first: Option<&'a [u8]> = None;
    let mut joined = false;
    let mut rest = event;
    while !rest.is_empty() {
        let (line, next) = match memchr2(b'\n', b'\r', rest) {
            Some(p) => {
                let crlf = rest.get(p) == Some(&b'\r') && rest.get(p + 1) == Some(&b'\n');
                let skip = if crlf { p + 2 } else { p + 1 };
                (rest.get(..p)?, rest.get(skip..)?)
            }
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        if line.is_empty() || line.first() == Some(&b':') {
            continue;
        }
        let (name, value) = match memchr(b':', line) {
            Some(c) => {
                let v = line.get(c + 1..)?;
                (line.get(..c)?, v.strip_prefix(b" ").unwrap_or(v))
            }
            // A line without a colon is a field with an empty value.
            None => (line, &line[line.len()..]),
        };
        if name != b"data" {
            continue;
        }
        match first {
            None => first = Some(value),
            Some(f) => {
                if !joined {
                    scratch.clear();
                    scratch.extend_from_slice(f);
                    joined = true;
                }
                scratch.push(b'\n');
                scratch.extend_from_slice(value);
            }
        }
    }
    if joined {
        let joined: &'a Vec<u8> = scratch;
        Some(joined)
    } else {
        first
    }
}

/// True when some text key carries a non-empty string (`"content":""`, `null` and arrays such as
/// `logprobs.content` do not count).
fn delivers_text(data: &[u8], f: &Finders) -> bool {
    f.text_keys.iter().any(|finder| {
        occurrences(finder, data).any(|at| {
            let value_at = after_colon(data, at + finder.needle().len());
            value_at.is_some_and(|i| {
                data.get(i) == Some(&b'"') && data.get(i + 1).is_some_and(|&b| b != b'"')
            })
        })
    })
}

/// The bytes from the value of the first occurrence of `"key":` (any depth) to the end of `data`,
/// or `None` when the key is absent or its value is `null`.
fn key_with_value<'a>(data: &'a [u8], key: &Finder<'_>) -> Option<&'a [u8]> {
    occurrences(key, data).find_map(|at| {
        let i = after_colon(data, at + key.needle().len())?;
        let value = data.get(i..)?;
        (!value.starts_with(b"null")).then_some(value)
    })
}

/// Where `finder`'s needle starts in `data`, non-overlapping, as `Finder::find_iter` gives them.
/// `find_iter` clones the finder's searcher into its iterator on every call, a memcpy that came
/// to 1.4% of a streamed request's instructions at three or so searches per event.
fn occurrences<'a>(finder: &'a Finder<'_>, data: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    let step = finder.needle().len().max(1);
    let mut from = 0;
    std::iter::from_fn(move || {
        let at = from + finder.find(data.get(from..)?)?;
        from = at + step;
        Some(at)
    })
}

/// Given the index just past a quoted key, the index of its value (after `:` and whitespace).
fn after_colon(data: &[u8], i: usize) -> Option<usize> {
    let i = skip_ws(data, i);
    (data.get(i) == Some(&b':')).then(|| skip_ws(data, i + 1))
}

/// `value` starts with `[` and the array is empty.
fn is_empty_array(value: &[u8]) -> bool {
    value.first() == Some(&b'[') && value.get(skip_ws(value, 1)) == Some(&b']')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_of(event: &str) -> Option<String> {
        let mut scratch = Vec::new();
        event_data(event.as_bytes(), &mut scratch).map(|d| String::from_utf8_lossy(d).into_owned())
    }

    #[test]
    fn data_field_rules() {
        assert_eq!(data_of("data: x\n\n").as_deref(), Some("x"));
        assert_eq!(data_of("data:x\n\n").as_deref(), Some("x"));
        assert_eq!(data_of("data:  x\n\n").as_deref(), Some(" x"));
        assert_eq!(data_of("data\n\n").as_deref(), Some(""));
        assert_eq!(
            data_of("data: a\r\ndata: b\r\n\r\n").as_deref(),
            Some("a\nb")
        );
        assert_eq!(data_of("data: a\rdata:b\r\r").as_deref(), Some("a\nb"));
        assert_eq!(
            data_of("event: x\nid: 1\ndata: a\n: note\ndata: b\n\n").as_deref(),
            Some("a\nb")
        );
        assert_eq!(data_of(": keep-alive\n\n"), None);
        assert_eq!(data_of("event: ping\n\n"), None);
        assert_eq!(data_of("dat: x\n\n"), None);
        assert_eq!(data_of("data: x"), Some("x".into()));
    }

    #[test]
    fn text_detection() {
        let f = &*FINDERS;
        let yes = [
            r#"{"choices":[{"delta":{"content":"Hi"}}]}"#,
            r#"{"choices":[{"delta":{"content" : "\""}}]}"#,
            r#"{"choices":[{"delta":{"reasoning":"hmm"}}]}"#,
            r#"{"choices":[{"delta":{"reasoning_content":"hmm"}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\""}}]}}]}"#,
            r#"{"choices":[{"text":" world","index":0}]}"#,
        ];
        for d in yes {
            assert!(delivers_text(d.as_bytes(), f), "{d}");
        }
        let no = [
            r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"choices":[{"delta":{"content":null}}]}"#,
            r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"choices":[{"delta":{"content":""},"logprobs":{"content":[{"token":"a"}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c","function":{"name":"f","arguments":""}}]}}]}"#,
            r#"{"choices":[{"delta":{"content":"","x":"\"content\":\"y"}}]}"#,
            r#"{"choices":[{"text":"","logprobs":{"text_offset":[0]}}]}"#,
        ];
        for d in no {
            assert!(!delivers_text(d.as_bytes(), f), "{d}");
        }
    }

    fn facts_of(events: &[&str]) -> (StreamFacts, Vec<bool>) {
        let mut facts = StreamFacts::default();
        let mut scratch = Vec::new();
        let drops = events
            .iter()
            .map(|e| facts.on_event(e.as_bytes(), &mut scratch))
            .collect();
        (facts, drops)
    }

    #[test]
    fn usage_only_chunk_is_recognised_and_confirmed() {
        let (facts, drops) = facts_of(&[
            "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"total_tokens\":5,\"completion_tokens\":2}}\n\n",
        ]);
        assert_eq!(drops, [true]);
        assert_eq!(facts.final_usage.map(|u| u.total_tokens), Some(5));
        assert!(!facts.malformed);

        // a nested empty `choices` next to a top-level usage is not the usage-only chunk
        let (facts, drops) = facts_of(&[
            "data: {\"x\":{\"choices\":[]},\"choices\":[{\"index\":0}],\"usage\":{\"prompt_tokens\":3,\"total_tokens\":5,\"completion_tokens\":2}}\n\n",
        ]);
        assert_eq!(drops, [false]);
        assert_eq!(facts.final_usage, None);

        // broken JSON in an event that had to be parsed
        let (facts, drops) =
            facts_of(&["data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\n\n"]);
        assert_eq!(drops, [false]);
        assert!(facts.malformed);
    }

    #[test]
    fn running_usage_is_parsed_lazily() {
        let (mut facts, _) = facts_of(&[
            "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":{\"prompt_tokens\":3,\"total_tokens\":4,\"completion_tokens\":1}}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}],\"usage\":{\"prompt_tokens\":3,\"total_tokens\":5,\"completion_tokens\":2}}\n\n",
        ]);
        assert!(facts.running_usage.unparsed);
        assert_eq!(
            facts
                .running_usage
                .get()
                .ok()
                .flatten()
                .map(|u| u.completion_tokens),
            Some(2)
        );
        assert_eq!(facts.content_events, 2);
    }

    #[test]
    fn errors_follow_the_openai_client() {
        let (facts, _) = facts_of(&[
            "data: {\"error\": {\"message\": \"boom\", \"type\": \"InternalServerError\", \"param\": null, \"code\": 500}}\n\n",
        ]);
        let e = facts.error.as_ref();
        assert_eq!(e.map(|e| e.message.as_str()), Some("boom"));
        assert_eq!(e.and_then(|e| e.code.as_deref()), Some("500"));
        for falsy in [
            "data: {\"error\":null}\n\n",
            "data: {\"choices\":[{\"finish_reason\":\"error\"}]}\n\n",
            "data: {\"x\":{\"error\":{\"message\":\"nested\"}}}\n\n",
        ] {
            let (facts, _) = facts_of(&[falsy]);
            assert_eq!(facts.error, None, "{falsy}");
            assert!(!facts.malformed, "{falsy}");
        }
    }

    #[test]
    fn a_truncated_object_is_malformed() {
        let mut scratch = Vec::new();
        let mut facts = StreamFacts::default();
        facts.on_event(
            b"data: {\"choices\":[{\"delta\":{\"content\":\" bro\n\n",
            &mut scratch,
        );
        assert!(facts.malformed);
        let mut facts = StreamFacts::default();
        facts.on_event(b"data: {\"choices\":[]} \n\n", &mut scratch);
        assert!(!facts.malformed);
    }

    #[test]
    fn non_json_data_is_malformed_but_done_is_not() {
        let (facts, _) = facts_of(&["data: [DONE]\n\n"]);
        assert!(facts.done && !facts.malformed);
        let (facts, _) = facts_of(&["data: hello\n\n"]);
        assert!(!facts.done && facts.malformed);
        assert_eq!(facts.events, 1);
    }

    proptest::proptest! {
        #[test]
        fn occurrences_are_find_iters_matches(
            pieces in proptest::collection::vec(
                proptest::sample::select(vec![
                    "\"text\"", "\"usage\"", "\"content\"", "\"error\"", "\"choices\"",
                    "\"arguments\"", "\"reasoning", "_content\"", "\"", "text", ":", " ", "{",
                ]),
                0..40,
            )
        ) {
            let data = pieces.concat().into_bytes();
            let f = &*FINDERS;
            for finder in f.text_keys.iter().chain([&f.usage, &f.choices, &f.error]) {
                let ours: Vec<usize> = occurrences(finder, &data).collect();
                let theirs: Vec<usize> = finder.find_iter(&data).collect();
                proptest::prop_assert_eq!(ours, theirs);
            }
        }
    }

    #[test]
    fn occurrences_do_not_overlap() {
        let finder = Finder::new(b"aa");
        assert_eq!(occurrences(&finder, b"aaaaa").collect::<Vec<_>>(), [0, 2]);
        assert_eq!(occurrences(&FINDERS.usage, b"").count(), 0);
    }
}
